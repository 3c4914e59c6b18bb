from django.db import models


class Role(models.TextChoices):
    OWNER = "owner", "Owner"  # everything, including members and deleting the organization
    ADMIN = "admin", "Admin"  # manage model codes, deployments, API keys
    MEMBER = "member", "Member"  # read, and use the organization's API keys


# Roles allowed to change the organization's resources.
MANAGER_ROLES = frozenset({Role.OWNER, Role.ADMIN})


class SignupMode(models.TextChoices):
    """Who may create an account on the portal (``INVENTIV_SIGNUP``)."""

    OPEN = "open", "Open, with e-mail verification"
    INVITE = "invite", "By invitation only"
    CLOSED = "closed", "Closed"

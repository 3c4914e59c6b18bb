"""Reads for organizations, access-checked: someone else's organization is simply not found."""

from __future__ import annotations

from django.db.models import QuerySet
from django.utils import timezone

from apps.accounts.audit import audit_context
from apps.accounts.models import AuditEntry, Invitation, Membership, Organization, User
from apps.accounts.permissions import Capability, refusal_message, role_can
from inventiv import crypto
from inventiv.errors import Forbidden, NotFound


def organization_list_for_user(*, user: User) -> QuerySet[Organization]:
    return Organization.objects.filter(memberships__user=user).order_by("id")


def _password_session() -> bool:
    return audit_context().sso is False


def sso_check(*, organization: Organization) -> None:
    """403 ``sso_required`` when the organization requires single sign-on and the request was
    signed in with a password."""
    if organization.require_sso and _password_session():
        raise Forbidden(
            "This organization requires single sign-on: sign in with it.", code="sso_required"
        )


def membership_get(*, user: User, organization_slug: str) -> Membership:
    membership = (
        Membership.objects.select_related("organization")
        .filter(user=user, organization__slug=organization_slug)
        .first()
    )
    if membership is None:
        raise NotFound("No such organization.", param="organization")
    sso_check(organization=membership.organization)
    return membership


def organization_default_membership(*, user: User) -> Membership:
    """The membership of the user's default organization: the one they chose (if they still
    belong to it), else their own personal one, never another user's personal organization
    they were added to."""
    qs = Membership.objects.select_related("organization").filter(user=user)
    if user.default_organization_id is not None:
        chosen = qs.filter(organization_id=user.default_organization_id).first()
        if chosen is not None:
            return chosen
    found = qs.filter(organization__personal_user=user).first()
    if found is None:
        raise NotFound(
            "You have no default organization: name one with 'organization'.",
            param="organization",
        )
    return found


def membership_check(*, membership: Membership, capability: Capability) -> Membership:
    """403 unless the membership's role may ``capability`` (the table in permissions.py)."""
    if not role_can(membership.role, capability):
        raise Forbidden(refusal_message(capability))
    return membership


def organization_get_for_user(
    *,
    user: User,
    slug: str | None,
    manage: bool = False,
    capability: Capability | None = None,
) -> Organization:
    """The organization ``slug`` (default: the user's default organization), if the user
    belongs to it (404 otherwise), and, with ``capability``, if their role may do it (403).
    ``manage=True`` is the older spelling of "owner or admin" (``Capability.MODELS_MANAGE``)."""
    membership = organization_membership_for_user(user=user, slug=slug)
    if capability is None and manage:
        capability = Capability.MODELS_MANAGE
    if capability is not None:
        membership_check(membership=membership, capability=capability)
    return membership.organization


def organization_membership_for_user(*, user: User, slug: str | None) -> Membership:
    if slug:
        return membership_get(user=user, organization_slug=slug)
    membership = organization_default_membership(user=user)
    sso_check(organization=membership.organization)
    return membership


def organization_check(*, user: User, organization_id: int, capability: Capability) -> None:
    """403 unless ``user``'s role in the organization may ``capability`` (the caller already
    knows the user may see it: a 404 was answered otherwise)."""
    role = (
        Membership.objects.filter(user=user, organization_id=organization_id)
        .values_list("role", flat=True)
        .first()
    )
    if role is None or not role_can(role, capability):
        raise Forbidden(refusal_message(capability))
    sso_check(organization=Organization.objects.get(pk=organization_id))


def organization_check_manager(*, user: User, organization_id: int) -> None:
    """403 unless ``user`` is an owner or admin of the organization. Prefer
    ``organization_check`` with the capability the endpoint needs."""
    organization_check(
        user=user, organization_id=organization_id, capability=Capability.MODELS_MANAGE
    )


def user_is_member(*, user_id: int, organization_id: int) -> bool:
    return Membership.objects.filter(user_id=user_id, organization_id=organization_id).exists()


def organization_ids_for_user(*, user: User, sso: bool | None = None) -> list[int]:
    """The organizations whose resources ``user`` sees in this request: all theirs, but those
    that require single sign-on when the request (or ``sso=False``: the WebSocket's session)
    was signed in with a password."""
    memberships = Membership.objects.filter(user=user)
    if sso is False or (sso is None and _password_session()):
        memberships = memberships.exclude(organization__require_sso=True)
    return list(memberships.values_list("organization_id", flat=True))


INVITATION_PREFIX = "ivi_"


def invitation_get_valid(*, token: str | None) -> Invitation | None:
    """The unused, unexpired invitation of ``token`` (its secret checked in constant time), or
    None for a malformed, unknown, wrong, used or expired one."""
    lookup_id = crypto.parse_lookup_id(INVITATION_PREFIX, token or "")
    if lookup_id is None:
        return None
    invitation = (
        Invitation.objects.select_related("organization")
        .filter(
            lookup_id=lookup_id,
            used_at__isnull=True,
            revoked_at__isnull=True,
            expires_at__gt=timezone.now(),
        )
        .first()
    )
    if invitation is None or not crypto.token_matches(token or "", invitation.secret_hash):
        return None
    return invitation


def invitation_list_for_organization(*, organization: Organization) -> QuerySet[Invitation]:
    return Invitation.objects.filter(organization=organization).order_by("-id")


def invitation_get_for_organization(
    *, organization: Organization, invitation_id: int
) -> Invitation:
    invitation = Invitation.objects.filter(organization=organization, id=invitation_id).first()
    if invitation is None:
        raise NotFound("No such invitation.")
    return invitation


def membership_list_for_organization(*, organization: Organization) -> QuerySet[Membership]:
    return (
        Membership.objects.select_related("user").filter(organization=organization).order_by("id")
    )


def membership_get_for_organization(*, organization: Organization, user_id: int) -> Membership:
    membership = (
        Membership.objects.select_related("user", "organization")
        .filter(organization=organization, user_id=user_id)
        .first()
    )
    if membership is None:
        raise NotFound("No such member.")
    return membership


def audit_list_for_organization(*, organization: Organization) -> QuerySet[AuditEntry]:
    return AuditEntry.objects.filter(organization_id=organization.pk).order_by("-id")

"""Reads for organizations, access-checked: someone else's organization is simply not found."""

from __future__ import annotations

from django.db.models import QuerySet
from django.utils import timezone

from apps.accounts.choices import MANAGER_ROLES, Role
from apps.accounts.models import Invitation, Membership, Organization, User
from inventiv import crypto
from inventiv.errors import Forbidden, NotFound


def organization_list_for_user(*, user: User) -> QuerySet[Organization]:
    return Organization.objects.filter(memberships__user=user).order_by("id")


def membership_get(*, user: User, organization_slug: str) -> Membership:
    membership = (
        Membership.objects.select_related("organization")
        .filter(user=user, organization__slug=organization_slug)
        .first()
    )
    if membership is None:
        raise NotFound("No such organization.", param="organization")
    return membership


def organization_get_for_user(
    *, user: User, slug: str | None, manage: bool = False
) -> Organization:
    """The organization ``slug`` (default: the user's own personal one, never another user's
    personal organization they were added to), if the user belongs to it.

    With ``manage=True`` the user must be an owner or admin (403 otherwise).
    """
    if slug:
        membership = membership_get(user=user, organization_slug=slug)
    else:
        found = (
            Membership.objects.select_related("organization")
            .filter(user=user, organization__personal_user=user)
            .first()
        )
        if found is None:
            raise NotFound(
                "You have no personal organization: name one with 'organization'.",
                param="organization",
            )
        membership = found
    if manage and Role(membership.role) not in MANAGER_ROLES:
        raise Forbidden("Only an owner or admin of this organization may do this.")
    return membership.organization


def organization_check_manager(*, user: User, organization_id: int) -> None:
    """403 unless ``user`` is an owner or admin of the organization (the caller already knows
    the user may see it)."""
    allowed = Membership.objects.filter(
        user=user, organization_id=organization_id, role__in=MANAGER_ROLES
    ).exists()
    if not allowed:
        raise Forbidden("Only an owner or admin of this organization may do this.")


def user_is_member(*, user_id: int, organization_id: int) -> bool:
    return Membership.objects.filter(user_id=user_id, organization_id=organization_id).exists()


def organization_ids_for_user(*, user: User) -> list[int]:
    return list(Membership.objects.filter(user=user).values_list("organization_id", flat=True))


INVITATION_PREFIX = "ivi_"


def invitation_get_valid(*, token: str | None) -> Invitation | None:
    """The unused, unexpired invitation of ``token`` (its secret checked in constant time), or
    None for a malformed, unknown, wrong, used or expired one."""
    lookup_id = crypto.parse_lookup_id(INVITATION_PREFIX, token or "")
    if lookup_id is None:
        return None
    invitation = Invitation.objects.filter(
        lookup_id=lookup_id, used_at__isnull=True, expires_at__gt=timezone.now()
    ).first()
    if invitation is None or not crypto.token_matches(token or "", invitation.secret_hash):
        return None
    return invitation

"""Writes for users, organizations and memberships."""

from __future__ import annotations

from datetime import datetime, timedelta

from allauth.account.models import EmailAddress
from django.conf import settings
from django.db import IntegrityError, transaction
from django.utils import timezone
from django.utils.crypto import get_random_string
from django.utils.text import slugify

from apps.accounts.authentication import TOKEN_PREFIX
from apps.accounts.choices import Role
from apps.accounts.models import Invitation, Membership, Organization, PersonalAccessToken, User
from apps.accounts.selectors import INVITATION_PREFIX, invitation_get_valid
from inventiv import crypto
from inventiv.errors import ApplicationError, Conflict


def _unique_slug(base: str) -> str:
    root = (slugify(base) or "org")[:48]
    slug = root
    while Organization.objects.filter(slug=slug).exists():
        slug = f"{root}-{get_random_string(6, 'abcdefghijklmnopqrstuvwxyz0123456789')}"
    return slug


def organization_create(*, name: str, owner: User, personal: bool = False) -> Organization:
    """Create an organization with ``owner`` as its owner (a personal one is ``owner``'s own
    personal organization, their default). Atomic."""
    with transaction.atomic():
        org = Organization.objects.create(
            name=name,
            slug=_unique_slug(name),
            personal=personal,
            personal_user=owner if personal else None,
        )
        Membership.objects.create(user=owner, organization=org, role=Role.OWNER)
    return org


def organization_ensure_personal(*, user: User) -> Organization:
    """Return the user's own personal organization, creating it if missing. Idempotent. Being
    a member (even an owner) of someone else's personal organization does not count."""
    existing = Organization.objects.filter(personal_user=user).first()
    if existing is not None:
        Membership.objects.get_or_create(
            user=user, organization=existing, defaults={"role": Role.OWNER}
        )
        return existing
    return organization_create(
        name=user.email.split("@")[0] or "personal", owner=user, personal=True
    )


def user_create(
    *, email: str, password: str | None, name: str = "", is_staff: bool = False
) -> User:
    """Create a user and their personal organization, atomically."""
    with transaction.atomic():
        try:
            if is_staff:
                user = User.objects.create_superuser(email=email, password=password, name=name)
            else:
                user = User.objects.create_user(email=email, password=password, name=name)
        except IntegrityError:
            raise Conflict("A user with this email already exists.", param="email") from None
        organization_ensure_personal(user=user)
        # Created by an operator (the admin, demo_setup, a script): the address is taken as
        # verified, so the portal's login (mandatory e-mail verification) lets the user in.
        EmailAddress.objects.update_or_create(
            user=user, email=user.email, defaults={"verified": True, "primary": True}
        )
    return user


def membership_set(*, organization: Organization, user: User, role: Role) -> Membership:
    membership, _ = Membership.objects.update_or_create(
        organization=organization, user=user, defaults={"role": role}
    )
    return membership


def access_token_create(
    *, user: User, name: str, expires_at: datetime | None = None
) -> tuple[PersonalAccessToken, str]:
    """A personal access token; returns it with its plaintext, never stored nor shown again."""
    if expires_at is not None and expires_at <= timezone.now():
        raise ApplicationError("expires_at must be in the future.", param="expires_at")
    lookup_id, plaintext = crypto.new_lookup_key(TOKEN_PREFIX)
    token = PersonalAccessToken.objects.create(
        user=user,
        name=name,
        lookup_id=lookup_id,
        secret_hash=crypto.token_hash(plaintext),
        expires_at=expires_at,
    )
    return token, plaintext


def access_token_revoke(*, token: PersonalAccessToken) -> PersonalAccessToken:
    """Revoke (idempotent). Takes effect on the next request: tokens are not cached."""
    PersonalAccessToken.objects.filter(id=token.id, revoked_at__isnull=True).update(
        revoked_at=timezone.now()
    )
    token.refresh_from_db()
    return token


INVITATION_TTL = timedelta(days=7)


class InvitationRefused(ApplicationError):
    code = "signup_closed"


def invitation_create(
    *, created_by: User | None, email: str = "", expires_at: datetime | None = None
) -> tuple[Invitation, str]:
    """A one-time sign-up invitation (default: valid 7 days); returns it with its token, never
    stored nor shown again."""
    now = timezone.now()
    expires_at = expires_at or now + INVITATION_TTL
    if expires_at <= now:
        raise ApplicationError("expires_at must be in the future.", param="expires_at")
    lookup_id, plaintext = crypto.new_lookup_key(INVITATION_PREFIX)
    invitation = Invitation.objects.create(
        lookup_id=lookup_id,
        secret_hash=crypto.token_hash(plaintext),
        email=User.objects.normalize_email(email).lower() if email else "",
        created_by=created_by,
        expires_at=expires_at,
    )
    return invitation, plaintext


def invitation_accept(*, token: str | None, user: User) -> Invitation:
    """Use the invitation ``token`` for ``user``: one compare-and-set, so that a token is used
    once even by two concurrent sign-ups. Call it in the transaction that creates the user;
    raises ``InvitationRefused`` (and so rolls the sign-up back) otherwise."""
    invitation = invitation_get_valid(token=token)
    if invitation is None:
        raise InvitationRefused("This invitation is unknown, expired or already used.")
    if invitation.email and invitation.email != user.email.lower():
        raise InvitationRefused("This invitation is for another e-mail address.", param="email")
    used = Invitation.objects.filter(
        id=invitation.id, used_at__isnull=True, expires_at__gt=timezone.now()
    ).update(used_at=timezone.now(), used_by=user)
    if used != 1:
        raise InvitationRefused("This invitation is unknown, expired or already used.")
    invitation.refresh_from_db()
    return invitation


def invitation_link(*, token: str) -> str:
    """The sign-up link of an invitation token, on this platform's public URL."""
    return f"{settings.PUBLIC_URL}/accounts/signup/?invitation={token}"

"""Writes for users, organizations and memberships."""

from __future__ import annotations

from datetime import datetime, timedelta

from allauth.account.models import EmailAddress
from django.conf import settings
from django.core.mail import send_mail
from django.db import IntegrityError, transaction
from django.db.models import ProtectedError
from django.utils import timezone
from django.utils.crypto import get_random_string
from django.utils.text import slugify

from apps.accounts.audit import audit_record
from apps.accounts.authentication import TOKEN_PREFIX
from apps.accounts.choices import Role
from apps.accounts.models import Invitation, Membership, Organization, PersonalAccessToken, User
from apps.accounts.permissions import Capability, refusal_message, role_can
from apps.accounts.selectors import INVITATION_PREFIX, invitation_get_valid
from inventiv import crypto
from inventiv.errors import ApplicationError, Conflict, Forbidden, NotFound

__all__ = ["audit_record"]  # the audit trail's writer, for every app's services


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
        audit_record(action="organization.create", organization=org, target=org, actor=owner)
    return org


def organization_rename(*, organization: Organization, name: str) -> Organization:
    name = name.strip()
    if not name:
        raise ApplicationError("name must not be blank.", param="name")
    with transaction.atomic():
        old = organization.name
        organization.name = name
        organization.save(update_fields=["name"])
        audit_record(
            action="organization.rename",
            organization=organization,
            target=organization,
            data={"from": old, "to": name},
        )
    return organization


def organization_set_require_sso(*, organization: Organization, required: bool) -> Organization:
    """Require single sign-on of the members (their password sessions no longer reach it).
    Refused (400) while no single sign-on is configured: nobody could reach it."""
    if required and not settings.SOCIALACCOUNT_PROVIDERS["openid_connect"]["APPS"]:
        raise ApplicationError(
            "No single sign-on is configured on this platform (INVENTIV_OIDC_ISSUER).",
            param="require_sso",
        )
    with transaction.atomic():
        organization.require_sso = required
        organization.save(update_fields=["require_sso"])
        audit_record(
            action="organization.require_sso",
            organization=organization,
            target=organization,
            data={"required": required},
        )
    return organization


def _lock_organization(organization_id: int) -> Organization:
    """Lock the organization's row first: every write that changes its memberships or deletes it
    takes this lock before any other, so concurrent ones queue instead of deadlocking; gone
    meanwhile: 404."""
    org = Organization.objects.select_for_update().filter(pk=organization_id).first()
    if org is None:
        raise NotFound("No such organization.", param="organization")
    return org


def _refuse_personal(organization: Organization, what: str) -> None:
    if organization.personal_user_id is not None:
        raise Conflict(f"A personal organization cannot be {what}: it is its user's own.")


def organization_delete(*, organization: Organization) -> None:
    """Delete the organization and everything it owns. Refused (409) for a personal
    organization and while it still has machines that are not archived (terminate them
    first): deleting must never orphan a paid machine."""
    from django.apps import apps

    _refuse_personal(organization, "deleted")
    instance_model = apps.get_model("instances", "Instance")
    with transaction.atomic():
        org = _lock_organization(organization.pk)
        if instance_model.objects.filter(organization=org, archived=False).exists():
            raise Conflict(
                "This organization still has instances: terminate them before deleting it."
            )
        audit_record(
            action="organization.delete",
            organization=org,
            target=org,
            data={"name": org.name, "members": list(org.members.values_list("email", flat=True))},
        )
        User.objects.filter(default_organization=org).update(default_organization=None)
        try:
            org.delete()
        except ProtectedError:
            raise Conflict(
                "This organization still has model codes: delete them before deleting it."
            ) from None


def organization_transfer(*, organization: Organization, by: User, to_user_id: int) -> Membership:
    """Make the member ``to_user_id`` the owner; ``by`` (an owner) stays on as an admin."""
    _refuse_personal(organization, "transferred")
    with transaction.atomic():
        _lock_organization(organization.pk)
        target = (
            Membership.objects.select_for_update()
            .select_related("user")
            .filter(organization=organization, user_id=to_user_id)
            .first()
        )
        if target is None:
            raise ApplicationError(
                "to_user must be a member of this organization.", param="to_user"
            )
        if target.user_id == by.pk:
            raise ApplicationError("You already own this organization.", param="to_user")
        target.role = Role.OWNER
        target.save(update_fields=["role"])
        Membership.objects.filter(organization=organization, user=by).update(role=Role.ADMIN)
        audit_record(
            action="organization.transfer",
            organization=organization,
            target=target.user,
            data={"from": by.email, "to": target.user.email},
        )
    return target


def user_set_default_organization(*, user: User, organization: Organization | None) -> User:
    """The organization creates go to when none is named (None: back to the personal one).
    The organization's row is locked first, as every write touching it does: the user row's
    foreign-key check would otherwise wait on it in the other order (a deadlock with a
    concurrent leave, transfer or delete)."""
    with transaction.atomic():
        if organization is not None:
            _lock_organization(organization.pk)
        user.default_organization = organization
        user.save(update_fields=["default_organization"])
    return user


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


def _owners(organization: Organization) -> int:
    return Membership.objects.filter(organization=organization, role=Role.OWNER).count()


def membership_set_role(*, membership: Membership, role: Role) -> Membership:
    """Change a member's role (owners only, checked by the caller); the last owner cannot be
    demoted (409)."""
    with transaction.atomic():
        _lock_organization(membership.organization_id)
        locked = Membership.objects.select_for_update().filter(pk=membership.pk).first()
        if locked is None:
            raise NotFound("No such member.")
        if locked.role == Role.OWNER and role != Role.OWNER and _owners(locked.organization) <= 1:
            raise Conflict("The last owner cannot be demoted: name another owner first.")
        old = locked.role
        locked.role = role
        locked.save(update_fields=["role"])
        audit_record(
            action="membership.role",
            organization=locked.organization,
            target=locked.user,
            data={"from": old, "to": role},
        )
    return locked


def membership_remove(*, membership: Membership, by: User) -> None:
    """Remove a member (``by`` leaves when it is their own). An admin may remove members and
    admins, only an owner may remove an owner; the last owner cannot leave nor be removed, and a
    personal organization's user stays in it (409)."""
    leaving = membership.user_id == by.pk
    with transaction.atomic():
        _lock_organization(membership.organization_id)
        members = list(
            Membership.objects.select_for_update()
            .select_related("user", "organization")
            .filter(organization_id=membership.organization_id)
            .order_by("id")
        )
        locked = next((m for m in members if m.pk == membership.pk), None)
        mine = next((m for m in members if m.user_id == by.pk), None)
        if locked is None or mine is None:
            raise Conflict("This membership changed meanwhile: reload and retry.")
        org = locked.organization
        if org.personal_user_id == locked.user_id:
            raise Conflict("A personal organization's own user cannot leave it.")
        if not leaving:
            needed = (
                Capability.ROLES_MANAGE if locked.role == Role.OWNER else Capability.MEMBERS_MANAGE
            )
            if not role_can(mine.role, needed):
                raise Forbidden(refusal_message(needed))
        owners = sum(1 for m in members if m.role == Role.OWNER)
        if locked.role == Role.OWNER and owners <= 1:
            raise Conflict("The last owner cannot leave: transfer the organization first.")
        audit_record(
            action="membership.leave" if leaving else "membership.remove",
            organization=org,
            target=locked.user,
            actor=by,
            data={"role": locked.role},
        )
        User.objects.filter(pk=locked.user_id, default_organization=org).update(
            default_organization=None
        )
        locked.delete()


def access_token_create(
    *, user: User, name: str, expires_at: datetime | None = None, sso: bool = False
) -> tuple[PersonalAccessToken, str]:
    """A personal access token; returns it with its plaintext, never stored nor shown again.
    ``sso``: created by a request signed in by single sign-on, so it may reach organizations
    that require it (as GitHub authorizes tokens for SAML organizations)."""
    if expires_at is not None and expires_at <= timezone.now():
        raise ApplicationError("expires_at must be in the future.", param="expires_at")
    lookup_id, plaintext = crypto.new_lookup_key(TOKEN_PREFIX)
    token = PersonalAccessToken.objects.create(
        user=user,
        name=name,
        lookup_id=lookup_id,
        secret_hash=crypto.token_hash(plaintext),
        expires_at=expires_at,
        sso=sso,
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
    *,
    created_by: User | None,
    email: str = "",
    expires_at: datetime | None = None,
    organization: Organization | None = None,
    role: Role = Role.MEMBER,
) -> tuple[Invitation, str]:
    """A one-time invitation (default: valid 7 days); returns it with its token, never stored
    nor shown again. With ``organization``: to join it with ``role`` (``email`` required); the
    link is e-mailed to that address."""
    now = timezone.now()
    expires_at = expires_at or now + INVITATION_TTL
    if expires_at <= now:
        raise ApplicationError("expires_at must be in the future.", param="expires_at")
    email = User.objects.normalize_email(email).lower() if email else ""
    if organization is not None and not email:
        raise ApplicationError("An organization's invitation names an e-mail.", param="email")
    if organization is not None and organization.members.filter(email=email).exists():
        raise Conflict("This address is already a member of the organization.", param="email")
    lookup_id, plaintext = crypto.new_lookup_key(INVITATION_PREFIX)
    with transaction.atomic():
        invitation = Invitation.objects.create(
            lookup_id=lookup_id,
            secret_hash=crypto.token_hash(plaintext),
            email=email,
            created_by=created_by,
            expires_at=expires_at,
            organization=organization,
            role=role,
        )
        audit_record(
            action="invitation.create",
            organization=organization,
            target=invitation,
            actor=created_by,
            data={"email": email, "role": role if organization else ""},
        )
        if organization is not None:
            link = invitation_link(token=plaintext)
            who = created_by.email if created_by else "An operator"
            transaction.on_commit(
                lambda: send_mail(
                    subject=f"Join {organization.name} on Inventiv Agents",
                    message=(
                        f"{who} invites you to join {organization.name} as {role}.\n\n"
                        f"Accept (once, before {expires_at:%Y-%m-%d %H:%M} UTC):\n{link}\n"
                    ),
                    from_email=None,
                    recipient_list=[email],
                )
            )
    return invitation, plaintext


def invitation_revoke(*, invitation: Invitation) -> Invitation:
    """Revoke an unused invitation (idempotent; a used one is a 409)."""
    with transaction.atomic():
        if invitation.used_at is not None:
            raise Conflict("This invitation was already used.")
        changed = Invitation.objects.filter(
            id=invitation.id, used_at__isnull=True, revoked_at__isnull=True
        ).update(revoked_at=timezone.now())
        invitation.refresh_from_db()
        if changed:
            audit_record(
                action="invitation.revoke", organization=invitation.organization, target=invitation
            )
    return invitation


def invitation_accept(*, token: str | None, user: User) -> Invitation:
    """Use the invitation ``token`` for ``user``: one compare-and-set, so that a token is used
    once even by two concurrent acceptances; an organization's invitation makes ``user`` a
    member with its role. Call it in the transaction that creates the user (a sign-up) or on
    its own (an existing account); raises ``InvitationRefused`` (rolling back) otherwise."""
    with transaction.atomic():
        invitation = invitation_get_valid(token=token)
        if invitation is None:
            raise InvitationRefused("This invitation is unknown, expired, revoked or already used.")
        if invitation.email and invitation.email != user.email.lower():
            raise InvitationRefused("This invitation is for another e-mail address.", param="email")
        used = Invitation.objects.filter(
            id=invitation.id,
            used_at__isnull=True,
            revoked_at__isnull=True,
            expires_at__gt=timezone.now(),
        ).update(used_at=timezone.now(), used_by=user)
        if used != 1:
            raise InvitationRefused("This invitation is unknown, expired, revoked or already used.")
        invitation.refresh_from_db()
        org = invitation.organization
        if org is not None:
            _membership, created = Membership.objects.get_or_create(
                user=user, organization=org, defaults={"role": invitation.role}
            )
            if not created:
                raise Conflict("You are already a member of this organization.")
        audit_record(
            action="invitation.accept",
            organization=org,
            target=invitation,
            actor=user,
            data={"role": invitation.role if org else "", "email": user.email},
        )
    return invitation


def invitation_link(*, token: str) -> str:
    """The link of an invitation token, on this platform's public URL: the sign-up page, which
    sends an existing account to its login (then the portal accepts it with the REST call)."""
    return f"{settings.PUBLIC_URL}/accounts/signup/?invitation={token}"

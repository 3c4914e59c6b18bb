"""Organizations, roles, invitations, the audit log (docs/teams.md)."""

from __future__ import annotations

import re
from typing import Any

import pytest
from django.core import mail
from django.db import connection, transaction
from django.db.utils import DatabaseError
from django.test import Client
from rest_framework.test import APIClient

from apps.accounts.choices import Role
from apps.accounts.models import AuditEntry, Invitation, Membership, Organization, User
from apps.accounts.permissions import CAPABILITIES, Capability
from apps.accounts.services import audit_record, membership_set, user_create

pytestmark = pytest.mark.django_db

MODEL = {"name": "team-bot", "engine": "mock", "model_id": "org/model", "gpu_count": 0}


def client_for(user: User) -> APIClient:
    client = APIClient()
    client.force_authenticate(user)
    return client


@pytest.fixture
def team(owner: User) -> Organization:
    created = client_for(owner).post("/api/v1/organizations/", {"name": "Acme AI"}, format="json")
    assert created.status_code == 201, created.json()
    assert created.json()["role"] == "owner" and created.json()["personal"] is False
    return Organization.objects.get(slug=created.json()["slug"])


def member_of(org: Organization, email: str, role: Role) -> User:
    user = user_create(email=email, password="correct-horse-9")
    membership_set(organization=org, user=user, role=role)
    return user


def test_create_rename_switch_delete(
    owner: User, owner_org: Organization, team: Organization
) -> None:
    api = client_for(owner)
    listed = api.get("/api/v1/organizations/").json()["results"]
    assert {o["slug"]: o["default"] for o in listed} == {owner_org.slug: True, team.slug: False}
    renamed = api.patch(f"/api/v1/organizations/{team.slug}/", {"name": "Acme"}, format="json")
    assert renamed.status_code == 200 and renamed.json()["name"] == "Acme"

    # switch: creates without an organization now go to the team
    assert api.post(f"/api/v1/organizations/{team.slug}/default/").json()["default"] is True
    created = api.post("/api/v1/model-codes/", MODEL, format="json")
    assert created.json()["organization"] == team.slug

    # a personal organization is never deleted; a team only once it owns no model codes
    assert api.delete(f"/api/v1/organizations/{owner_org.slug}/").status_code == 409
    busy = api.delete(f"/api/v1/organizations/{team.slug}/")
    assert busy.status_code == 409 and "model codes" in busy.json()["error"]["message"]
    assert api.delete(f"/api/v1/model-codes/{created.json()['id']}/").status_code == 204
    assert api.delete(f"/api/v1/organizations/{team.slug}/").status_code == 204
    assert not Organization.objects.filter(pk=team.pk).exists()
    # the default falls back to the personal organization
    again = api.post("/api/v1/model-codes/", MODEL, format="json")
    assert again.json()["organization"] == owner_org.slug
    actions = list(
        AuditEntry.objects.filter(organization_id=team.pk).values_list("action", flat=True)
    )
    assert actions == ["organization.create", "organization.rename", "organization.delete"]


def test_roles_differ(owner: User, team: Organization) -> None:
    admin = member_of(team, "ada@example.com", Role.ADMIN)
    member = member_of(team, "max@example.com", Role.MEMBER)
    org = {"organization": team.slug}
    # an admin manages model codes and keys, a member only reads
    assert (
        client_for(admin).post("/api/v1/model-codes/", MODEL | org, format="json").status_code
        == 201
    )
    refused = client_for(member).post(
        "/api/v1/model-codes/", MODEL | org | {"name": "x"}, format="json"
    )
    assert refused.status_code == 403
    assert refused.json()["error"]["code"] == "permission_denied"
    assert client_for(member).get("/api/v1/model-codes/", org).json()["results"]
    # only the owner renames, changes roles, transfers, reads budgets' rights
    for user, expected in [(admin, 403), (member, 403), (owner, 200)]:
        answer = client_for(user).patch(
            f"/api/v1/organizations/{team.slug}/", {"name": "N"}, format="json"
        )
        assert answer.status_code == expected, (user, answer.json())
    promote = f"/api/v1/organizations/{team.slug}/members/{member.pk}/"
    assert client_for(admin).patch(promote, {"role": "admin"}, format="json").status_code == 403
    assert client_for(owner).patch(promote, {"role": "admin"}, format="json").status_code == 200
    assert Membership.objects.get(user=member, organization=team).role == Role.ADMIN
    # an admin may read the audit log, a member may not
    assert client_for(admin).get(f"/api/v1/organizations/{team.slug}/audit/").status_code == 200
    membership_set(organization=team, user=member, role=Role.MEMBER)
    assert client_for(member).get(f"/api/v1/organizations/{team.slug}/audit/").status_code == 403


def test_the_table_is_the_one_in_the_docs() -> None:
    from pathlib import Path

    text = (Path(__file__).resolve().parents[2] / "docs" / "teams.md").read_text()
    rows = dict(re.findall(r"^\| `([a-z.]+)` \| ([a-z, ]+) \|", text, flags=re.M))
    assert rows == {
        c.value: ", ".join(r.value for r in Role if r in CAPABILITIES[c]) for c in Capability
    }


def test_last_owner_cannot_leave_and_transfer(owner: User, team: Organization) -> None:
    api = client_for(owner)
    left = api.post(f"/api/v1/organizations/{team.slug}/leave/")
    assert left.status_code == 409 and "last owner" in left.json()["error"]["message"]
    demote = api.patch(
        f"/api/v1/organizations/{team.slug}/members/{owner.pk}/", {"role": "member"}, format="json"
    )
    assert demote.status_code == 409
    admin = member_of(team, "ada@example.com", Role.ADMIN)
    # an admin cannot remove the owner
    removed = client_for(admin).delete(f"/api/v1/organizations/{team.slug}/members/{owner.pk}/")
    assert removed.status_code == 403
    moved = api.post(
        f"/api/v1/organizations/{team.slug}/transfer/", {"to_user": admin.pk}, format="json"
    )
    assert moved.status_code == 200, moved.json()
    roles = dict(Membership.objects.filter(organization=team).values_list("user__email", "role"))
    assert roles == {owner.email: "admin", admin.email: "owner"}
    # now the old owner may leave
    assert api.post(f"/api/v1/organizations/{team.slug}/leave/").status_code == 204
    assert not Membership.objects.filter(organization=team, user=owner).exists()


def _token(link: str) -> str:
    match = re.search(r"invitation=(ivi_[A-Za-z0-9_\-]+)", link)
    assert match, link
    return match.group(1)


def test_invitation_round_trip_new_account(
    owner: User, team: Organization, settings: Any, django_capture_on_commit_callbacks: Any
) -> None:
    """Invite, accept as a new user (sign-up), act with the role, be removed: all audited."""
    settings.SIGNUP_MODE = "invite"
    api = client_for(owner)
    url = f"/api/v1/organizations/{team.slug}/invitations/"
    with django_capture_on_commit_callbacks(execute=True):
        created = api.post(url, {"email": "Nina@Example.com", "role": "admin"}, format="json")
    assert created.status_code == 201, created.json()
    assert created.json()["email"] == "nina@example.com"
    assert len(mail.outbox) == 1 and mail.outbox[0].to == ["nina@example.com"]
    token = _token(mail.outbox[0].body)
    assert token == _token(created.json()["link"])
    assert "link" not in api.get(url).json()["results"][0]

    # sign up with the link (the real allauth form)
    browser = Client()
    page = browser.get(f"/accounts/signup/?invitation={token}")
    assert page.status_code == 200
    signed = browser.post(
        "/accounts/signup/",
        {"email": "nina@example.com", "password1": "a-long-pass-42", "password2": "a-long-pass-42"},
    )
    assert signed.status_code == 302, signed.content[:500]
    nina = User.objects.get(email="nina@example.com")
    assert Membership.objects.get(user=nina, organization=team).role == Role.ADMIN
    # the link works once
    assert (
        client_for(nina)
        .post("/api/v1/invitations/accept/", {"token": token}, format="json")
        .status_code
        == 400
    )

    # she acts with her role: an admin creates a key in the team
    key = client_for(nina).post(
        "/api/v1/api-keys/", {"name": "ci", "organization": team.slug}, format="json"
    )
    assert key.status_code == 201, key.json()
    # and is removed by the owner
    gone = api.delete(f"/api/v1/organizations/{team.slug}/members/{nina.pk}/")
    assert gone.status_code == 204
    assert client_for(nina).get(f"/api/v1/organizations/{team.slug}/").status_code == 404

    actions = list(
        AuditEntry.objects.filter(organization_id=team.pk)
        .order_by("id")
        .values_list("action", "actor_email")
    )
    assert ("invitation.create", owner.email) in actions
    assert ("invitation.accept", nina.email) in actions
    assert ("api_key.create", nina.email) in actions  # she acted with her role
    assert ("membership.remove", owner.email) in actions
    audit = api.get(f"/api/v1/organizations/{team.slug}/audit/").json()["results"]
    assert audit[0]["action"] == "membership.remove" and audit[0]["ip"] == "127.0.0.1"


def test_invitation_existing_account_revoke_expire(
    owner: User, team: Organization, stranger: User
) -> None:
    api = client_for(owner)
    url = f"/api/v1/organizations/{team.slug}/invitations/"
    first = api.post(url, {"email": stranger.email}, format="json").json()
    # another address cannot use it
    other = user_create(email="eve@example.com", password="correct-horse-9")
    refused = client_for(other).post(
        "/api/v1/invitations/accept/", {"token": _token(first["link"])}, format="json"
    )
    assert refused.status_code == 400 and refused.json()["error"]["param"] == "email"
    # revoked: cannot be used
    assert api.post(f"{url}{first['id']}/revoke/").json()["revoked_at"]
    revoked = client_for(stranger).post(
        "/api/v1/invitations/accept/", {"token": _token(first["link"])}, format="json"
    )
    assert revoked.status_code == 400
    # a fresh one is accepted by the existing account, as a member
    second = api.post(url, {"email": stranger.email}, format="json").json()
    accepted = client_for(stranger).post(
        "/api/v1/invitations/accept/", {"token": _token(second["link"])}, format="json"
    )
    assert accepted.status_code == 200 and accepted.json()["role"] == "member"
    # an admin may not invite an owner; a member may not invite at all
    admin = member_of(team, "ada@example.com", Role.ADMIN)
    assert (
        client_for(admin)
        .post(url, {"email": "o@example.com", "role": "owner"}, format="json")
        .status_code
        == 403
    )
    assert (
        client_for(stranger).post(url, {"email": "o@example.com"}, format="json").status_code == 403
    )
    # expired: refused
    third = api.post(url, {"email": "late@example.com"}, format="json").json()
    Invitation.objects.filter(pk=third["id"]).update(expires_at="2000-01-01T00:00:00Z")
    late = user_create(email="late@example.com", password="correct-horse-9")
    expired = client_for(late).post(
        "/api/v1/invitations/accept/", {"token": _token(third["link"])}, format="json"
    )
    assert expired.status_code == 400


def test_audit_is_append_only(owner: User, owner_org: Organization) -> None:
    entry = audit_record(action="test.thing", organization=owner_org, actor=owner)
    with pytest.raises(ValueError):
        entry.save()
    with pytest.raises(ValueError):
        AuditEntry.objects.filter(pk=entry.pk).update(action="x")
    with pytest.raises(ValueError):
        AuditEntry.objects.all().delete()
    if connection.vendor == "postgresql":
        with pytest.raises(DatabaseError), transaction.atomic(), connection.cursor() as cursor:
            cursor.execute("UPDATE accounts_auditentry SET action = 'x'")
        with pytest.raises(DatabaseError), transaction.atomic(), connection.cursor() as cursor:
            cursor.execute("DELETE FROM accounts_auditentry")
    assert AuditEntry.objects.get(pk=entry.pk).action == "test.thing"


def test_sign_in_events_are_audited(owner: User) -> None:
    browser = Client()
    bad = browser.post("/accounts/login/", {"login": owner.email, "password": "wrong-one-1"})
    assert bad.status_code in (200, 400)
    good = browser.post("/accounts/login/", {"login": owner.email, "password": "correct-horse-9"})
    assert good.status_code == 302
    actions = list(AuditEntry.objects.order_by("id").values_list("action", "actor_email", "ip"))
    assert ("auth.login_failed", "", "127.0.0.1") in actions
    assert ("auth.login", owner.email, "127.0.0.1") in actions


@pytest.mark.django_db(transaction=True)
def test_the_audit_context_holds_through_the_asgi_handler(owner: User) -> None:
    """Through Django's ASGI handler (the web role's): the async middleware path keeps the
    address, and the actor the sync view sets, for the entry the view writes."""
    import asyncio

    from django.test import AsyncClient

    org = Organization.objects.get(personal_user=owner)

    async def rename() -> int:
        client = AsyncClient()
        await client.aforce_login(owner)
        answer = await client.patch(
            f"/api/v1/organizations/{org.slug}/",
            {"name": "Renamed"},
            content_type="application/json",
        )
        return answer.status_code

    assert asyncio.run(rename()) == 200
    entry = AuditEntry.objects.get(action="organization.rename")
    assert (entry.actor_email, entry.ip) == (owner.email, "127.0.0.1")


def test_operators_see_invitations_and_the_audit_log_in_the_admin(
    staff: User, owner: User, team: Organization
) -> None:
    client = client_for(owner)
    client.post(
        f"/api/v1/organizations/{team.slug}/invitations/", {"email": "q@example.com"}, format="json"
    )
    admin = Client()
    admin.force_login(staff)
    invitations = admin.get("/admin/accounts/invitation/")
    assert invitations.status_code == 200 and team.slug in invitations.content.decode()
    audit = admin.get("/admin/accounts/auditentry/")
    assert audit.status_code == 200 and "invitation.create" in audit.content.decode()
    entry = AuditEntry.objects.filter(action="invitation.create").first()
    assert entry is not None
    # read-only: no change, no delete
    assert (
        admin.post(f"/admin/accounts/auditentry/{entry.pk}/delete/", {"post": "yes"}).status_code
        == 403
    )
    assert AuditEntry.objects.filter(pk=entry.pk).exists()

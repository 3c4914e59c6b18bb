"""Single sign-on through allauth's OpenID Connect provider, against a local OIDC provider the
test starts (real HTTP: discovery, token and userinfo endpoints; an HS256-signed id_token)."""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any
from urllib.parse import parse_qs, urlparse

import jwt
import pytest
from django.test import Client

from apps.accounts.models import AuditEntry, Membership, User
from apps.accounts.services import user_create

pytestmark = pytest.mark.django_db

CLIENT_ID = "inventiv-test"
SECRET = "a-client-secret-long-enough-for-hs256"


class FakeOidc:
    """The identity provider: the user it signs in is ``self.user``."""

    def __init__(self) -> None:
        self.user = {"sub": "u-1", "email": "ines@corp.example", "email_verified": True}
        self.token_requests: list[dict[str, list[str]]] = []
        outer = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args: Any) -> None:
                pass

            def _json(self, body: dict[str, Any], status: int = 200) -> None:
                data = json.dumps(body).encode()
                self.send_response(status)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

            def do_GET(self) -> None:
                if self.path == "/.well-known/openid-configuration":
                    self._json(
                        {
                            "issuer": outer.issuer,
                            "authorization_endpoint": f"{outer.issuer}/authorize",
                            "token_endpoint": f"{outer.issuer}/token",
                            "userinfo_endpoint": f"{outer.issuer}/userinfo",
                            "jwks_uri": f"{outer.issuer}/jwks",
                            "token_endpoint_auth_methods_supported": ["client_secret_post"],
                        }
                    )
                elif self.path == "/userinfo":
                    if self.headers.get("Authorization") != "Bearer at-1":
                        self._json({"error": "invalid_token"}, 401)
                    else:
                        self._json(outer.user)
                else:
                    self._json({"error": "not_found"}, 404)

            def do_POST(self) -> None:
                length = int(self.headers.get("Content-Length") or 0)
                form = parse_qs(self.rfile.read(length).decode())
                outer.token_requests.append(form)
                if form.get("code") != ["good-code"] or form.get("client_secret") != [SECRET]:
                    self._json({"error": "invalid_grant"}, 400)
                    return
                now = int(time.time())
                claims = {"iss": outer.issuer, "aud": CLIENT_ID, "iat": now, "exp": now + 300}
                id_token = jwt.encode(claims | outer.user, SECRET, algorithm="HS256")
                self._json({"access_token": "at-1", "token_type": "Bearer", "id_token": id_token})

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.issuer = f"http://127.0.0.1:{self.server.server_address[1]}"
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.thread.start()

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


@pytest.fixture
def idp(settings: Any) -> Iterator[FakeOidc]:
    fake = FakeOidc()
    settings.SOCIALACCOUNT_PROVIDERS = {
        "openid_connect": {
            "APPS": [
                {
                    "provider_id": "sso",
                    "name": "Corp SSO",
                    "client_id": CLIENT_ID,
                    "secret": SECRET,
                    "settings": {"server_url": fake.issuer},
                }
            ],
            "OAUTH_PKCE_ENABLED": True,
        }
    }
    try:
        yield fake
    finally:
        fake.close()


def sso_login(client: Client, idp: FakeOidc, code: str = "good-code") -> Any:
    started = client.post("/accounts/oidc/sso/login/")
    assert started.status_code == 302, started.content[:300]
    location = urlparse(started["Location"])
    assert f"{location.scheme}://{location.netloc}{location.path}" == f"{idp.issuer}/authorize"
    query = parse_qs(location.query)
    assert query["client_id"] == [CLIENT_ID] and "code_challenge" in query
    return client.get(
        "/accounts/oidc/sso/login/callback/", {"code": code, "state": query["state"][0]}
    )


def test_oidc_login_round_trip_creates_the_account(idp: FakeOidc, settings: Any) -> None:
    settings.SIGNUP_MODE = "closed"  # SSO users still get an account (INVENTIV_OIDC_SIGNUP)
    client = Client()
    done = sso_login(client, idp)
    assert done.status_code == 302 and done["Location"] == "/", done.content[:500]
    user = User.objects.get(email="ines@corp.example")
    assert Membership.objects.filter(user=user, organization__personal_user=user).exists()
    assert client.get("/api/v1/me/").json()["email"] == "ines@corp.example"
    assert idp.token_requests[0]["code_verifier"]  # PKCE
    assert AuditEntry.objects.filter(action="auth.sso_login", actor_id=user.pk).exists()


def test_oidc_signs_in_the_existing_account_of_that_address(idp: FakeOidc) -> None:
    existing = user_create(email="ines@corp.example", password="correct-horse-9")
    client = Client()
    assert sso_login(client, idp).status_code == 302
    assert User.objects.filter(email="ines@corp.example").count() == 1
    assert client.get("/api/v1/me/").json()["email"] == existing.email


def test_a_refused_code_signs_nobody_in(idp: FakeOidc) -> None:
    client = Client()
    answer = sso_login(client, idp, code="stolen")
    assert answer.status_code in (200, 400, 401)  # allauth's authentication error page
    assert not User.objects.filter(email="ines@corp.example").exists()
    assert client.get("/api/v1/me/").status_code in (401, 403)


def test_an_organization_can_require_sso(idp: FakeOidc) -> None:
    """Owner requires SSO: the member's password session no longer reaches the organization
    (403 sso_required on it, its resources gone from lists), their SSO session does."""
    from apps.accounts.choices import Role
    from apps.accounts.services import membership_set, organization_create
    from apps.models.services import model_create

    owner = user_create(email="boss@corp.example", password="correct-horse-9")
    member = user_create(email="ines@corp.example", password="correct-horse-9")
    team = organization_create(name="Corp", owner=owner)
    membership_set(organization=team, user=member, role=Role.MEMBER)
    model_create(organization=team, name="corp-bot", engine="mock", model_id="o/m", gpu_count=0)

    password = Client()
    assert (
        password.post(
            "/accounts/login/", {"login": member.email, "password": "correct-horse-9"}
        ).status_code
        == 302
    )
    assert len(password.get("/api/v1/model-codes/").json()["results"]) == 1

    boss = Client()
    boss.post("/accounts/login/", {"login": owner.email, "password": "correct-horse-9"})
    # a member may not require it; the owner may
    refused = password.patch(
        f"/api/v1/organizations/{team.slug}/",
        {"require_sso": True},
        content_type="application/json",
    )
    assert refused.status_code == 403 and refused.json()["error"]["code"] == "permission_denied"
    required = boss.patch(
        f"/api/v1/organizations/{team.slug}/",
        {"require_sso": True},
        content_type="application/json",
    )
    assert required.status_code == 200 and required.json()["require_sso"] is True

    # the member's password session: refused on the organization, nothing of it in lists
    blocked = password.get(f"/api/v1/organizations/{team.slug}/")
    assert blocked.status_code == 403 and blocked.json()["error"]["code"] == "sso_required"
    assert password.get("/api/v1/model-codes/").json()["results"] == []
    # the same person by single sign-on reaches it
    sso = Client()
    assert sso_login(sso, idp).status_code == 302
    assert sso.get(f"/api/v1/organizations/{team.slug}/").status_code == 200
    assert len(sso.get("/api/v1/model-codes/").json()["results"]) == 1
    assert AuditEntry.objects.filter(
        action="organization.require_sso", organization_id=team.pk, actor_email=owner.email
    ).exists()


def test_access_tokens_reach_an_sso_organization_only_if_made_by_sso(idp: FakeOidc) -> None:
    """A personal access token made in a password session acts as that session on an
    organization that requires single sign-on (403 ``sso_required``, its resources gone from
    lists); one made in an SSO session reaches it, and so does a token that token makes."""
    from apps.accounts.choices import Role
    from apps.accounts.services import membership_set, organization_create
    from apps.models.services import model_create

    owner = user_create(email="boss@corp.example", password="correct-horse-9")
    member = user_create(email="ines@corp.example", password="correct-horse-9")
    team = organization_create(name="Corp", owner=owner)
    membership_set(organization=team, user=member, role=Role.MEMBER)
    model_create(organization=team, name="corp-bot", engine="mock", model_id="o/m", gpu_count=0)

    def token_from(client: Client | None, bearer: str | None = None) -> dict[str, Any]:
        headers = {"HTTP_AUTHORIZATION": f"Bearer {bearer}"} if bearer else {}
        answer = (client or Client()).post(
            "/api/v1/access-tokens/", {"name": "ci"}, content_type="application/json", **headers
        )
        assert answer.status_code == 201, answer.content
        return dict(answer.json())

    password = Client()
    password.post("/accounts/login/", {"login": member.email, "password": "correct-horse-9"})
    sso = Client()
    assert sso_login(sso, idp).status_code == 302
    by_password, by_sso = token_from(password), token_from(sso)
    assert by_password["sso"] is False and by_sso["sso"] is True
    by_token_of_sso = token_from(None, by_sso["token"])
    by_token_of_password = token_from(None, by_password["token"])
    assert by_token_of_sso["sso"] is True and by_token_of_password["sso"] is False

    def reach(token: str) -> tuple[int, int]:
        auth = {"HTTP_AUTHORIZATION": f"Bearer {token}"}
        org = Client().get(f"/api/v1/organizations/{team.slug}/", **auth)
        models = Client().get("/api/v1/model-codes/", **auth).json()["results"]
        return org.status_code, len(models)

    # before the organization requires it, every token reaches it
    assert reach(by_password["token"]) == (200, 1)
    team.require_sso = True
    team.save(update_fields=["require_sso"])
    assert reach(by_sso["token"]) == (200, 1)
    assert reach(by_token_of_sso["token"]) == (200, 1)
    assert reach(by_password["token"]) == (403, 0)
    assert reach(by_token_of_password["token"]) == (403, 0)
    refused = Client().get(
        f"/api/v1/organizations/{team.slug}/",
        HTTP_AUTHORIZATION=f"Bearer {by_password['token']}",
    )
    assert refused.json()["error"]["code"] == "sso_required"


def test_requiring_sso_without_a_provider_is_refused(settings: Any) -> None:
    from apps.accounts.services import organization_create

    settings.SOCIALACCOUNT_PROVIDERS = {"openid_connect": {"APPS": []}}
    owner = user_create(email="boss@corp.example", password="correct-horse-9")
    team = organization_create(name="Corp", owner=owner)
    client = Client()
    client.force_login(owner)
    answer = client.patch(
        f"/api/v1/organizations/{team.slug}/",
        {"require_sso": True},
        content_type="application/json",
    )
    assert answer.status_code == 400 and answer.json()["error"]["param"] == "require_sso"


@pytest.mark.django_db(transaction=True)
def test_a_password_websocket_gets_no_events_of_an_sso_only_organization() -> None:
    import asyncio

    from asgiref.testing import ApplicationCommunicator

    from apps.accounts.choices import Role
    from apps.accounts.services import membership_set, organization_create
    from inventiv.asgi import application
    from inventiv.events import org_group

    owner = user_create(email="boss@corp.example", password="correct-horse-9")
    member = user_create(email="ines@corp.example", password="correct-horse-9")
    team = organization_create(name="Corp", owner=owner)
    membership_set(organization=team, user=member, role=Role.MEMBER)
    client = Client()
    client.force_login(member)
    cookie = f"sessionid={client.cookies['sessionid'].value}".encode()

    async def groups() -> list[str]:
        socket = ApplicationCommunicator(
            application,
            {
                "type": "websocket",
                "path": "/ws/events/",
                "raw_path": b"/ws/events/",
                "query_string": b"",
                "headers": [
                    (b"cookie", cookie),
                    (b"origin", b"http://localhost"),
                    (b"host", b"localhost"),
                ],
                "subprotocols": [],
                "client": ["127.0.0.1", 5000],
                "server": ["127.0.0.1", 8000],
            },
        )
        await socket.send_input({"type": "websocket.connect"})
        accepted = await socket.receive_output(5)
        assert accepted["type"] == "websocket.accept", accepted
        hello = json.loads((await socket.receive_output(5))["text"])
        await socket.send_input({"type": "websocket.disconnect", "code": 1000})
        await socket.wait(5)
        return list(hello["data"]["groups"])

    assert org_group(team.pk) in asyncio.run(groups())
    team.require_sso = True
    team.save(update_fields=["require_sso"])
    assert org_group(team.pk) not in asyncio.run(groups())

"""Personal access tokens: scripts and CI use the REST API as their user."""

from __future__ import annotations

from datetime import timedelta
from typing import Any

import pytest
from django.utils import timezone
from rest_framework.test import APIClient

from apps.accounts.models import PersonalAccessToken
from apps.accounts.services import access_token_create

pytestmark = pytest.mark.django_db


def bearer(token: str) -> APIClient:
    client = APIClient()
    client.credentials(HTTP_AUTHORIZATION=f"Bearer {token}")
    return client


def test_a_token_is_shown_once_stored_hashed_and_acts_as_its_user(api: APIClient) -> None:
    created = api.post("/api/v1/access-tokens/", {"name": "ci"})
    assert created.status_code == 201
    token = created.json()["token"]
    assert token.startswith("ivp_")
    row = PersonalAccessToken.objects.get()
    assert token not in (row.secret_hash, row.lookup_id)
    assert "token" not in api.get("/api/v1/access-tokens/").json()["results"][0]
    # When a script uses it, then it is the user
    me = bearer(token).get("/api/v1/me/")
    assert me.status_code == 200 and me.json()["email"] == "olivia@example.com"
    made = bearer(token).post(
        "/api/v1/model-codes/",
        {"name": "bot", "engine": "mock", "model_id": "m", "gpu_count": 0},
        format="json",
    )
    assert made.status_code == 201
    assert PersonalAccessToken.objects.get().last_used_at is not None


@pytest.mark.parametrize("case", ["revoked", "expired", "wrong", "malformed"])
def test_it_refuses_bad_tokens_with_one_401(owner: Any, case: str) -> None:
    row, token = access_token_create(user=owner, name="ci")
    if case == "revoked":
        PersonalAccessToken.objects.filter(id=row.id).update(revoked_at=timezone.now())
    elif case == "expired":
        PersonalAccessToken.objects.filter(id=row.id).update(
            expires_at=timezone.now() - timedelta(seconds=1)
        )
    elif case == "wrong":
        token = token[:-4] + ("AAAA" if not token.endswith("AAAA") else "BBBB")
    else:
        token = "ivp_nope"
    response = bearer(token).get("/api/v1/me/")
    assert response.status_code == 401
    assert response.json()["error"]["message"] == "Invalid, revoked or expired access token."
    assert response["WWW-Authenticate"] == "Bearer"


def test_only_its_owner_lists_or_revokes_a_token(
    api: APIClient, stranger_api: APIClient, owner: Any
) -> None:
    row, token = access_token_create(user=owner, name="ci")
    assert stranger_api.get("/api/v1/access-tokens/").json()["results"] == []
    assert stranger_api.post(f"/api/v1/access-tokens/{row.id}/revoke/").status_code == 404
    assert bearer(token).get("/api/v1/me/").status_code == 200
    revoked = api.post(f"/api/v1/access-tokens/{row.id}/revoke/")
    assert revoked.status_code == 200 and revoked.json()["revoked_at"]
    assert bearer(token).get("/api/v1/me/").status_code == 401


def test_a_token_never_opens_the_agent_api(owner: Any) -> None:
    _, token = access_token_create(user=owner, name="ci")
    response = bearer(token).post(
        "/internal/agent/v1/heartbeat", {"instance_id": "x", "state": "ready"}, format="json"
    )
    assert response.status_code == 401


def test_an_expiry_in_the_past_is_refused(api: APIClient) -> None:
    response = api.post(
        "/api/v1/access-tokens/",
        {"name": "ci", "expires_at": (timezone.now() - timedelta(days=1)).isoformat()},
    )
    assert response.status_code == 400
    assert response.json()["error"]["param"] == "expires_at"

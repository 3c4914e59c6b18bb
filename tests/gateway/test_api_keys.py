"""API keys through the REST API: shown once, org-scoped, revocable, rotatable."""

from __future__ import annotations

from django.db import connection
from django.test.utils import CaptureQueriesContext

from apps.gateway.models import ApiKey
from inventiv.crypto import token_hash
from tests.gateway.conftest import make_model_code


def test_it_creates_a_key_shown_once_and_stored_hashed(api, owner_org):
    model = make_model_code(owner_org)

    created = api.post(
        "/api/v1/api-keys/",
        {"name": "ci", "model_codes": [model.pk], "rpm_limit": 60},
        format="json",
    )

    assert created.status_code == 201
    key = created.json()["key"]
    assert key.startswith("sk-inv_") and created.json()["model_codes"] == ["sales-bot"]
    row = ApiKey.objects.get()
    assert row.secret_hash == token_hash(key) and key not in row.secret_hash
    shown = api.get(f"/api/v1/api-keys/{row.pk}/").json()
    assert "key" not in shown and shown["prefix"] == key[: len(shown["prefix"])]


def test_it_lists_keys_paginated_without_a_query_per_key(api, owner_org):
    model = make_model_code(owner_org)
    for i in range(5):
        api.post("/api/v1/api-keys/", {"name": f"k{i}", "model_codes": [model.pk]}, format="json")

    with CaptureQueriesContext(connection) as queries:
        listed = api.get("/api/v1/api-keys/?limit=3")

    assert listed.json()["count"] == 5 and len(listed.json()["results"]) == 3
    assert len(queries) <= 5


def test_it_refuses_a_model_code_of_another_organization(api, stranger):
    from apps.accounts.models import Organization

    theirs = make_model_code(Organization.objects.get(memberships__user=stranger), "their-bot")

    answer = api.post("/api/v1/api-keys/", {"name": "x", "model_codes": [theirs.pk]}, format="json")

    assert answer.status_code == 400
    assert answer.json()["error"]["param"] == "model_codes"


def test_a_stranger_cannot_see_or_revoke_a_key(api, stranger_api):
    key_id = api.post("/api/v1/api-keys/", {"name": "mine"}, format="json").json()["id"]

    assert stranger_api.get(f"/api/v1/api-keys/{key_id}/").status_code == 404
    assert stranger_api.post(f"/api/v1/api-keys/{key_id}/revoke/").status_code == 404
    assert stranger_api.get("/api/v1/api-keys/").json()["count"] == 0
    assert ApiKey.objects.get().revoked_at is None


def test_it_revokes_and_rotates_a_key(api):
    key_id = api.post("/api/v1/api-keys/", {"name": "ci", "tpm_limit": 1000}, format="json").json()[
        "id"
    ]

    rotated = api.post(f"/api/v1/api-keys/{key_id}/rotate/")
    revoked_again = api.post(f"/api/v1/api-keys/{key_id}/rotate/")
    new_id = rotated.json()["id"]
    revoked = api.post(f"/api/v1/api-keys/{new_id}/revoke/")

    assert rotated.status_code == 201 and rotated.json()["key"].startswith("sk-inv_")
    assert rotated.json()["tpm_limit"] == 1000 and rotated.json()["rotated_from"] == key_id
    assert api.get(f"/api/v1/api-keys/{key_id}/").json()["revoked"] is True
    assert revoked_again.status_code == 400
    assert revoked.json()["revoked"] is True


def test_the_demo_key_is_kept_across_restarts_unless_revoked(owner_org):
    from apps.gateway.services import api_key_ensure_demo, api_key_revoke

    first = api_key_ensure_demo(organization=owner_org)
    again = api_key_ensure_demo(organization=owner_org, existing=first)
    api_key_revoke(key=ApiKey.objects.get())
    replaced = api_key_ensure_demo(organization=owner_org, existing=first)

    assert again == first and replaced != first
    assert ApiKey.objects.count() == 2


def test_the_gateways_hot_path_hash_is_the_stored_keyed_hash(settings):
    from apps.gateway.key_cache import presented_hash
    from apps.gateway.keys import new_key

    # Given a key
    _lookup, plaintext = new_key()

    # Then the gateway's hash is token_hash's, under this SECRET_KEY and under others (its
    # derived key follows the setting)
    assert presented_hash(plaintext) == token_hash(plaintext)
    first = presented_hash(plaintext)
    settings.SECRET_KEY = "another-secret-key-for-this-test-only-0123456789"
    assert presented_hash(plaintext) == token_hash(plaintext) != first
    settings.SECRET_KEY = settings.SECRET_KEY + "x"
    assert presented_hash(plaintext) == token_hash(plaintext)

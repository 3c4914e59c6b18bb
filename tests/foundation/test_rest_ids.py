"""Ids in REST paths and query strings are parsed strictly, and nothing under /api/ answers an
HTML error page: a path id that cannot exist is a 404 ``not_found``, a malformed id filter a
400 ``invalid_value`` naming it, an unexpected failure a 500 ``server_error`` in the envelope."""

from __future__ import annotations

from typing import Any

import pytest
from django.test import Client
from rest_framework.test import APIClient

from apps.accounts.models import Organization, PersonalAccessToken, User
from apps.accounts.services import access_token_create
from apps.gateway.services import api_key_create
from apps.models.models import LlmModel
from apps.models.services import model_create
from inventiv.params import MAX_ID, id_or_none

# Strings that int() or str.isdigit() would take for a number, and numbers no bigint holds.
NOT_IDS = ["²", "٣", "1_0", " 7", "7 ", "+7", "-1", "0", "00", "1e3", str(MAX_ID + 1), "9" * 30]


def _assert_envelope(response: Any, status: int, code: str) -> dict[str, Any]:
    assert response.status_code == status, response.content[:300]
    assert response["Content-Type"].startswith("application/json"), response["Content-Type"]
    error = response.json()["error"]
    assert error["code"] == code
    assert error["type"] and error["message"]
    return dict(error)


@pytest.fixture
def model_code(owner_org: Organization) -> LlmModel:
    return model_create(organization=owner_org, name="m1", engine="mock", model_id="m", gpu_count=0)


@pytest.fixture
def client(api: APIClient) -> APIClient:
    api.raise_request_exception = False
    return api


def test_it_parses_only_ascii_decimal_ids_a_bigint_holds() -> None:
    assert [id_or_none(raw) for raw in NOT_IDS] == [None] * len(NOT_IDS)
    assert id_or_none("7") == 7
    assert id_or_none(str(MAX_ID)) == MAX_ID
    assert id_or_none(True) is None


@pytest.mark.parametrize(
    ("method", "template"),
    [
        ("get", "/api/v1/model-codes/{}/"),
        ("patch", "/api/v1/model-codes/{}/"),
        ("post", "/api/v1/model-codes/{}/deploy/"),
        ("get", "/api/v1/api-keys/{}/"),
        ("post", "/api/v1/api-keys/{}/revoke/"),
        ("post", "/api/v1/access-tokens/{}/revoke/"),
        ("get", "/api/v1/models/{}/offers/"),
        ("get", "/api/v1/instances/{}/"),
    ],
)
def test_it_answers_404_in_the_envelope_for_a_path_id_that_cannot_exist(
    client: APIClient, model_code: LlmModel, method: str, template: str
) -> None:
    for raw in NOT_IDS:
        response = getattr(client, method)(template.format(raw), {}, format="json")

        _assert_envelope(response, 404, "not_found")


def test_it_never_resolves_a_lookalike_of_an_existing_id(
    client: APIClient, owner: User, model_code: LlmModel
) -> None:
    token, _ = access_token_create(user=owner, name="cli")
    arabic = str(token.pk).translate(str.maketrans("0123456789", "٠١٢٣٤٥٦٧٨٩"))

    response = client.post(f"/api/v1/access-tokens/{arabic}/revoke/")

    _assert_envelope(response, 404, "not_found")
    assert PersonalAccessToken.objects.get(pk=token.pk).revoked_at is None
    assert client.get(f"/api/v1/model-codes/{model_code.pk}_/").status_code == 404
    assert client.get(f"/api/v1/model-codes/{model_code.pk}/").status_code == 200


@pytest.mark.parametrize(
    ("path", "param"),
    [
        ("/api/v1/instances/", "model_code"),
        ("/api/v1/models/{model}/offers/", "provider"),
        ("/api/v1/models/{model}/offers/", "instance_type"),
        ("/api/v1/usage/", "api_key"),
        ("/api/v1/usage/summary/", "api_key"),
    ],
)
def test_it_answers_400_naming_a_malformed_id_filter(
    client: APIClient, model_code: LlmModel, path: str, param: str
) -> None:
    for raw in ["²", "abc", "1_0", str(MAX_ID + 1), "-3", "0"]:
        response = client.get(path.format(model=model_code.pk), {param: raw})

        error = _assert_envelope(response, 400, "invalid_value")
        assert error["param"] == param


def test_it_still_filters_instances_by_a_well_formed_model_code(
    client: APIClient, model_code: LlmModel, owner_org: Organization, owner: User
) -> None:
    key, _ = api_key_create(organization=owner_org, created_by=owner, name="k", model_codes=[])

    assert client.get("/api/v1/instances/", {"model_code": model_code.pk}).json()["count"] == 0
    assert client.get("/api/v1/usage/", {"api_key": key.pk}).status_code == 200
    response = client.post(
        "/api/v1/api-keys/", {"name": "k2", "model_codes": [MAX_ID + 1]}, format="json"
    )
    assert _assert_envelope(response, 400, "invalid_value")["param"] == "model_codes"


@pytest.mark.parametrize(
    "path", ["/api/v1/no-such-thing/", "/api/v1/models/²/offers/", "/internal/agent/v1/nope"]
)
def test_it_answers_an_unknown_api_path_in_the_envelope(client: APIClient, path: str) -> None:
    _assert_envelope(client.get(path), 404, "not_found")


def test_it_keeps_html_error_pages_outside_the_api(client: APIClient) -> None:
    response = client.get("/no-such-page/")

    assert response.status_code == 404
    assert response["Content-Type"].startswith("text/html")


def test_it_answers_an_unexpected_failure_with_a_json_500(
    client: APIClient, model_code: LlmModel, monkeypatch: pytest.MonkeyPatch
) -> None:
    def broken(**kwargs: Any) -> None:
        raise RuntimeError("a bug")

    monkeypatch.setattr("apps.models.api.views.model_list_for_user", broken)

    response = client.get("/api/v1/model-codes/")

    _assert_envelope(response, 500, "server_error")
    assert "a bug" not in response.content.decode()


def test_it_answers_a_suspicious_host_under_the_api_in_the_envelope(db: Any) -> None:
    response = Client(HTTP_HOST="evil.example").get("/api/v1/me/")

    _assert_envelope(response, 400, "invalid_request")

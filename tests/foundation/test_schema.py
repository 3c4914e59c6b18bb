"""The OpenAPI schema at /api/schema/ documents what the API answers (its shape, checked here;
the behaviour, checked by schemathesis in test_schema_conformance.py), and the REST edges that
schemathesis found answer 400 or an empty page instead of a 500."""

from __future__ import annotations

from typing import Any

import pytest
from rest_framework.test import APIClient

from apps.accounts.models import Organization
from apps.models.models import LlmModel
from apps.models.services import model_create


@pytest.fixture
def schema(api: APIClient) -> dict[str, Any]:
    response = api.get("/api/schema/", HTTP_ACCEPT="application/vnd.oai.openapi+json")
    assert response.status_code == 200
    return dict(response.json())


def _operations(schema: dict[str, Any]) -> list[tuple[str, str, dict[str, Any]]]:
    return [
        (path, method.upper(), op)
        for path, item in schema["paths"].items()
        for method, op in item.items()
        if method in ("get", "post", "put", "patch", "delete")
    ]


def test_it_documents_the_error_envelope_on_every_operation(schema: dict[str, Any]) -> None:
    envelope = schema["components"]["schemas"]["ErrorEnvelope"]
    assert envelope["required"] == ["error"]
    body = schema["components"]["schemas"]["ErrorBody"]
    assert body["properties"]["param"]["nullable"] is True

    for path, method, op in _operations(schema):
        responses = op["responses"]
        assert "401" in responses, (method, path)
        ref = responses["401"]["content"]["application/json"]["schema"]["$ref"]
        assert ref.endswith("/ErrorEnvelope")
        if "{" in path:
            assert "404" in responses, (method, path)
        if "requestBody" in op:
            assert {"400", "415"} <= set(responses), (method, path)
            assert set(op["requestBody"]["content"]) == {"application/json"}, (method, path)
        if method != "GET":
            assert "403" in responses, (method, path)


def test_it_documents_lists_in_the_pagination_envelope(schema: dict[str, Any]) -> None:
    lists = {
        "/api/v1/model-codes/": "PaginatedModelCodeOutList",
        "/api/v1/api-keys/": "PaginatedApiKeyOutList",
        "/api/v1/access-tokens/": "PaginatedAccessTokenOutList",
        "/api/v1/instances/": "PaginatedInstanceOutList",
        "/api/v1/usage/": "PaginatedUsageRecordOutList",
    }
    for path, component in lists.items():
        op = schema["paths"][path]["get"]
        ref = op["responses"]["200"]["content"]["application/json"]["schema"]["$ref"]
        assert ref.endswith("/" + component), path
        assert {"limit", "offset"} <= {p["name"] for p in op["parameters"]}, path
        wrapper = schema["components"]["schemas"][component]
        assert {"count", "next", "previous", "results"} <= set(wrapper["properties"])
    summary = schema["paths"]["/api/v1/usage/summary/"]["get"]["responses"]["200"]
    assert summary["content"]["application/json"]["schema"]["$ref"].endswith("/UsageSummaryList")


def test_it_documents_nullable_fields_as_nullable(schema: dict[str, Any]) -> None:
    components = schema["components"]["schemas"]

    assert components["ModelCodeOut"]["properties"]["provider"]["nullable"] is True
    assert components["InstanceOut"]["properties"]["instance_type"]["nullable"] is True


def test_it_documents_the_instance_filters(schema: dict[str, Any]) -> None:
    params = {p["name"]: p for p in schema["paths"]["/api/v1/instances/"]["get"]["parameters"]}

    assert params["model_code"]["schema"]["minimum"] == 1
    assert {"status", "include_archived"} <= set(params)


@pytest.mark.parametrize("limit", ["3031801602466404892672", str(2**63), "-5", "0"])
def test_it_caps_a_huge_limit_or_offset_instead_of_failing(
    api: APIClient, owner_org: Organization, limit: str
) -> None:
    model_create(organization=owner_org, name="m1", engine="mock", model_id="m", gpu_count=0)

    page = api.get("/api/v1/model-codes/", {"limit": limit})
    far = api.get("/api/v1/model-codes/", {"offset": "9" * 25, "limit": limit})

    assert page.status_code == 200 and page.json()["count"] == 1
    assert len(page.json()["results"]) == 1
    assert far.status_code == 200 and far.json()["results"] == []


@pytest.mark.parametrize(
    ("path", "param"),
    [
        ("/api/v1/model-codes/", "organization"),
        ("/api/v1/model-codes/", "name"),
        ("/api/v1/api-keys/", "organization"),
        ("/api/v1/instances/", "status"),
    ],
)
def test_it_refuses_a_nul_in_a_text_filter(api: APIClient, path: str, param: str) -> None:
    api.raise_request_exception = False

    response = api.get(path, {param: "a\x00b"})

    assert response.status_code == 400, response.content[:200]
    assert response.json()["error"] == {
        "message": f"{param} must not contain NUL characters.",
        "type": "invalid_request_error",
        "param": param,
        "code": "invalid_value",
    }


def test_it_refuses_a_nul_in_the_ping_organization(
    api: APIClient, staff: Any, owner_org: Organization
) -> None:
    api.force_authenticate(staff)

    response = api.post("/api/v1/ops/ping/?organization=a%00b")

    assert response.status_code == 400
    assert response.json()["error"]["param"] == "organization"


@pytest.mark.parametrize("field", ["rpm_limit", "tpm_limit", "concurrency_limit"])
def test_it_refuses_a_key_limit_no_integer_column_holds(api: APIClient, field: str) -> None:
    api.raise_request_exception = False

    response = api.post("/api/v1/api-keys/", {"name": "k", field: 2**31}, format="json")

    assert response.status_code == 400, response.content[:200]
    assert response.json()["error"]["param"] == field


def test_it_refuses_a_max_model_len_no_integer_column_holds(api: APIClient) -> None:
    api.raise_request_exception = False
    body = {"name": "m", "engine": "mock", "model_id": "m", "gpu_count": 0}

    response = api.post("/api/v1/model-codes/", {**body, "max_model_len": 2**31}, format="json")

    assert response.status_code == 400, response.content[:200]
    assert response.json()["error"]["param"] == "max_model_len"
    assert not LlmModel.objects.exists()

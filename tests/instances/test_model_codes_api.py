"""Model codes through the REST API: validation, tenancy, roles, commands."""

from __future__ import annotations

from typing import Any

import pytest
from django.db import connection
from django.test.utils import CaptureQueriesContext
from rest_framework.test import APIClient

from apps.accounts.choices import Role
from apps.accounts.models import Organization, User
from apps.accounts.services import membership_set, user_create
from apps.instances.models import Provider
from apps.models.models import LlmModel

pytestmark = pytest.mark.django_db

VALID = {"name": "sales-bot", "engine": "mock", "model_id": "org/model", "gpu_count": 0}


def test_it_creates_a_model_code_in_the_personal_organization(api: APIClient) -> None:
    response = api.post("/api/v1/model-codes/", VALID)
    assert response.status_code == 201
    assert response.json()["status"] == "draft"
    assert response.json()["organization"].startswith("olivia")


@pytest.mark.parametrize(
    ("payload", "param"),
    [
        ({"engine_args": {"token_rate": -1}}, "engine_args.token_rate"),
        ({"engine_args": {"bogus": 1}}, "engine_args.bogus"),
        ({"engine": "vllm", "gpu_count": 1}, "vram_per_gpu_gb"),
        ({"engine": "vllm", "gpu_count": 0, "vram_per_gpu_gb": 24}, "gpu_count"),
        (
            {
                "engine": "vllm",
                "gpu_count": 1,
                "vram_per_gpu_gb": 24,
                "engine_args": {"tensor_parallel_size": 2},
            },
            "engine_args.tensor_parallel_size",
        ),
        ({"gpu_count": 99}, "gpu_count"),
        ({"name": "Not A Slug!"}, "name"),
        ({"engine": "tgi-nope"}, "engine"),
    ],
)
def test_it_rejects_bad_engine_settings_and_hardware_needs_naming_the_field(
    api: APIClient, payload: dict[str, Any], param: str
) -> None:
    response = api.post("/api/v1/model-codes/", {**VALID, **payload}, format="json")
    assert response.status_code == 400, response.json()
    error = response.json()["error"]
    assert error["param"] == param
    assert param.split(".")[-1] in error["message"]
    assert LlmModel.objects.count() == 0


def test_it_refuses_a_duplicate_name_in_one_organization(api: APIClient) -> None:
    assert api.post("/api/v1/model-codes/", VALID).status_code == 201
    response = api.post("/api/v1/model-codes/", VALID)
    assert response.status_code == 409
    assert response.json()["error"]["param"] == "name"


def test_a_stranger_cannot_see_or_touch_another_organizations_model_code(
    api: APIClient, stranger_api: APIClient
) -> None:
    model_id = api.post("/api/v1/model-codes/", VALID).json()["id"]
    assert stranger_api.get(f"/api/v1/model-codes/{model_id}/").status_code == 404
    assert stranger_api.post(f"/api/v1/model-codes/{model_id}/deploy/").status_code == 404
    assert stranger_api.get("/api/v1/model-codes/").json()["results"] == []
    not_mine = stranger_api.get(f"/api/v1/model-codes/{model_id}/")
    missing = stranger_api.get("/api/v1/model-codes/999999/")
    assert not_mine.json() == missing.json()


def test_a_member_reads_but_cannot_change_model_codes(
    api: APIClient, owner_org: Organization
) -> None:
    model_id = api.post("/api/v1/model-codes/", VALID).json()["id"]
    member: User = user_create(email="mia@example.com", password="correct-horse-9")
    membership_set(organization=owner_org, user=member, role=Role.MEMBER)
    client = APIClient()
    client.force_authenticate(member)
    assert client.get(f"/api/v1/model-codes/{model_id}/").status_code == 200
    response = client.post(f"/api/v1/model-codes/{model_id}/deploy/")
    assert response.status_code == 403
    assert response.json()["error"]["type"] == "permission_error"


def test_deploy_fails_clearly_when_no_provider_can_host_the_model(api: APIClient) -> None:
    model_id = api.post("/api/v1/model-codes/", VALID).json()["id"]
    response = api.post(f"/api/v1/model-codes/{model_id}/deploy/", {"replicas": 1})
    assert response.status_code == 400
    assert response.json()["error"]["code"] == "no_provider"
    assert LlmModel.objects.get(id=model_id).status == "draft"


def test_deploy_scale_and_decommission_record_intent(api: APIClient) -> None:
    Provider.objects.create(name="local", kind="local")
    model_id = api.post("/api/v1/model-codes/", VALID).json()["id"]
    deployed = api.post(f"/api/v1/model-codes/{model_id}/deploy/", {"replicas": 3})
    assert deployed.status_code == 202
    assert (deployed.json()["status"], deployed.json()["desired_replicas"]) == ("deploying", 3)
    bad = api.post(f"/api/v1/model-codes/{model_id}/replicas/", {"replicas": -1})
    assert bad.status_code == 400 and bad.json()["error"]["param"] == "replicas"
    assert (
        api.post(f"/api/v1/model-codes/{model_id}/replicas/", {"replicas": 1}).json()[
            "desired_replicas"
        ]
        == 1
    )
    gone = api.post(f"/api/v1/model-codes/{model_id}/decommission/").json()
    assert (gone["status"], gone["desired_replicas"]) == ("decommissioning", 0)
    again = api.post(f"/api/v1/model-codes/{model_id}/deploy/")
    assert again.status_code == 409
    assert api.delete(f"/api/v1/model-codes/{model_id}/").status_code == 409


def test_a_draft_model_code_can_be_edited_and_deleted(api: APIClient) -> None:
    model_id = api.post("/api/v1/model-codes/", VALID).json()["id"]
    edited = api.patch(
        f"/api/v1/model-codes/{model_id}/", {"engine_args": {"token_rate": 5}}, format="json"
    )
    assert edited.status_code == 200
    assert edited.json()["engine_args"] == {"token_rate": 5.0}
    bad = api.patch(f"/api/v1/model-codes/{model_id}/", {"engine_args": {"x": 1}}, format="json")
    assert bad.status_code == 400
    assert api.delete(f"/api/v1/model-codes/{model_id}/").status_code == 204


def test_listing_model_codes_costs_a_constant_number_of_queries(api: APIClient) -> None:
    api.post("/api/v1/model-codes/", VALID)
    with CaptureQueriesContext(connection) as one:
        assert api.get("/api/v1/model-codes/").status_code == 200
    for i in range(5):
        api.post("/api/v1/model-codes/", {**VALID, "name": f"bot-{i}"})
    with CaptureQueriesContext(connection) as six:
        assert len(api.get("/api/v1/model-codes/").json()["results"]) == 6
    assert len(six) == len(one)


def test_the_local_provider_is_refused_unless_the_platform_enables_it(
    api: APIClient, settings: Any
) -> None:
    Provider.objects.create(name="local", kind="local")
    settings.LOCAL_PROVIDER_ENABLED = False
    response = api.post("/api/v1/model-codes/", {**VALID, "provider": "local"}, format="json")
    assert response.status_code == 400
    assert response.json()["error"]["code"] == "provider_not_enabled"
    model_id = api.post("/api/v1/model-codes/", VALID).json()["id"]
    deploy = api.post(f"/api/v1/model-codes/{model_id}/deploy/", {"replicas": 1})
    assert deploy.json()["error"]["code"] == "no_provider"


def test_the_engine_of_a_deployed_model_code_cannot_change_under_its_replicas(
    api: APIClient,
) -> None:
    Provider.objects.create(name="local", kind="local")
    model_id = api.post("/api/v1/model-codes/", VALID).json()["id"]
    api.post(f"/api/v1/model-codes/{model_id}/deploy/", {"replicas": 1})
    refused = api.patch(
        f"/api/v1/model-codes/{model_id}/", {"model_id": "org/other"}, format="json"
    )
    assert refused.status_code == 409
    assert refused.json()["error"]["param"] == "model_id"
    ok = api.patch(
        f"/api/v1/model-codes/{model_id}/",
        {"routing_policy": "prefix_aware", "model_id": "org/model"},
        format="json",
    )
    assert ok.status_code == 200 and ok.json()["routing_policy"] == "prefix_aware"

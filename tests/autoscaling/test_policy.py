"""The scaling policy through the REST API: validation, manual replicas as min = max, quota."""

from __future__ import annotations

from typing import Any

import pytest
from rest_framework.test import APIClient

from apps.accounts.models import Organization
from apps.instances.models import Provider
from apps.models.models import LlmModel, ScalingQuota
from apps.models.services import scaling_quota_set
from inventiv.errors import ApplicationError

pytestmark = pytest.mark.django_db

VALID = {"name": "sales-bot", "engine": "mock", "model_id": "org/model", "gpu_count": 0}


def _deployed(api: APIClient, replicas: int = 1) -> int:
    Provider.objects.get_or_create(name="local", kind="local")
    model_id = int(api.post("/api/v1/model-codes/", VALID, format="json").json()["id"])
    assert api.post(f"/api/v1/model-codes/{model_id}/deploy/", {"replicas": replicas}).status_code
    return model_id


def test_it_keeps_manual_replicas_as_a_policy_with_min_equal_max(api: APIClient) -> None:
    model_id = _deployed(api, replicas=2)
    body = api.get(f"/api/v1/model-codes/{model_id}/").json()
    assert (body["min_replicas"], body["max_replicas"], body["desired_replicas"]) == (2, 2, 2)
    api.post(f"/api/v1/model-codes/{model_id}/replicas/", {"replicas": 3})
    model = LlmModel.objects.get(id=model_id)
    assert (model.min_replicas, model.max_replicas, model.desired_replicas) == (3, 3, 3)


def test_it_sets_a_policy_and_clamps_the_desired_count_into_it(api: APIClient) -> None:
    model_id = _deployed(api, replicas=3)
    response = api.patch(
        f"/api/v1/model-codes/{model_id}/scaling/",
        {
            "min_replicas": 0,
            "max_replicas": 2,
            "target_load_per_replica": 4,
            "scale_timezone": "Europe/Paris",
            "scale_schedules": [
                {"days": [0, 1, 2, 3, 4], "start": "08:00", "end": "19:00", "min_replicas": 2}
            ],
        },
        format="json",
    )
    assert response.status_code == 200, response.json()
    body = response.json()
    assert (body["min_replicas"], body["max_replicas"], body["desired_replicas"]) == (0, 2, 2)
    assert body["scale_schedules"][0]["days"] == [0, 1, 2, 3, 4]
    assert body["scale_timezone"] == "Europe/Paris"


@pytest.mark.parametrize(
    ("payload", "param"),
    [
        ({"min_replicas": 3, "max_replicas": 2}, "min_replicas"),
        ({"max_replicas": 65}, "max_replicas"),
        ({"target_load_per_replica": 0}, "target_load_per_replica"),
        ({"target_kv_cache_usage": 1.5}, "target_kv_cache_usage"),
        ({"scale_timezone": "Mars/Olympus"}, "scale_timezone"),
        ({"hold_timeout_s": 0}, "hold_timeout_s"),
        (
            {
                "scale_schedules": [
                    {"days": [7], "start": "08:00", "end": "19:00", "min_replicas": 1}
                ]
            },
            "scale_schedules",
        ),
        (
            {
                "scale_schedules": [
                    {"days": [1], "start": "19:00", "end": "08:00", "min_replicas": 1}
                ]
            },
            "scale_schedules[0].end",
        ),
        (
            {
                "max_replicas": 2,
                "scale_schedules": [
                    {"days": [1], "start": "08:00", "end": "19:00", "min_replicas": 5}
                ],
            },
            "scale_schedules[0].min_replicas",
        ),
    ],
)
def test_it_refuses_a_bad_policy_naming_the_field_and_changes_nothing(
    api: APIClient, payload: dict[str, Any], param: str
) -> None:
    model_id = _deployed(api, replicas=1)
    response = api.patch(f"/api/v1/model-codes/{model_id}/scaling/", payload, format="json")
    assert response.status_code == 400, response.json()
    assert response.json()["error"]["param"].startswith(param)
    model = LlmModel.objects.get(id=model_id)
    assert (model.min_replicas, model.max_replicas, model.scale_schedules) == (1, 1, [])


def test_a_stranger_cannot_change_or_read_the_policy(
    api: APIClient, stranger_api: APIClient
) -> None:
    model_id = _deployed(api)
    url = f"/api/v1/model-codes/{model_id}/scaling/"
    assert stranger_api.patch(url, {"max_replicas": 5}, format="json").status_code == 404
    assert stranger_api.get(f"/api/v1/model-codes/{model_id}/scaling-decisions/").status_code == 404
    assert LlmModel.objects.get(id=model_id).max_replicas == 1


def test_an_organization_quota_is_set_and_cleared(owner_org: Organization) -> None:
    scaling_quota_set(organization=owner_org, max_gpus=4, max_instances=3)
    assert ScalingQuota.objects.get(organization=owner_org).max_instances == 3
    scaling_quota_set(organization=owner_org, max_gpus=None, max_instances=None)
    assert ScalingQuota.objects.get(organization=owner_org).max_gpus is None
    with pytest.raises(ApplicationError):
        scaling_quota_set(organization=owner_org, max_gpus=-1, max_instances=None)

"""The scaling policy through the REST API: validation, manual replicas as min = max, quota."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest
from asgiref.sync import async_to_sync
from channels.layers import get_channel_layer
from rest_framework.test import APIClient

from apps.accounts.models import AuditEntry, Organization, User
from apps.gateway.listener import EventListener
from apps.instances.hosting import POWER_KINDS
from apps.instances.models import Provider
from apps.instances.providers import get_adapter
from apps.models.models import LlmModel, ScalingQuota
from apps.models.services import scaling_quota_set
from inventiv.errors import ApplicationError
from inventiv.events import INSTANCE_GROUP, SCALING_POLICY

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
        ({"ttft_p95_bound_ms": 0}, "ttft_p95_bound_ms"),
        ({"latency_window_s": 5}, "latency_window_s"),
        ({"drain_timeout_s": 5}, "drain_timeout_s"),
        ({"scale_to_zero_mode": "hibernate"}, "scale_to_zero_mode"),
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


def test_it_sets_the_latency_bound_the_drain_timeout_and_power_off_to_zero(
    api: APIClient,
) -> None:
    model_id = _deployed(api)
    body = api.get(f"/api/v1/model-codes/{model_id}/").json()
    assert body["scale_to_zero_mode"] == "terminate"
    assert (body["ttft_p95_bound_ms"], body["drain_timeout_s"]) == (None, None)
    response = api.patch(
        f"/api/v1/model-codes/{model_id}/scaling/",
        {
            "ttft_p95_bound_ms": 800,
            "latency_window_s": 120,
            "drain_timeout_s": 1800,
            "scale_to_zero_mode": "power_off",
        },
        format="json",
    )
    assert response.status_code == 200, response.json()
    model = LlmModel.objects.get(id=model_id)
    assert (model.ttft_p95_bound_ms, model.latency_window_s) == (800, 120)
    assert (model.drain_timeout_s, model.scale_to_zero_mode) == (1800, "power_off")
    # null clears the bound and gives the drain back to the platform's deadline
    api.patch(
        f"/api/v1/model-codes/{model_id}/scaling/",
        {"ttft_p95_bound_ms": None, "drain_timeout_s": None},
        format="json",
    )
    model.refresh_from_db()
    assert (model.ttft_p95_bound_ms, model.drain_timeout_s) == (None, None)


def test_it_refuses_power_off_on_a_provider_that_cannot_power_machines_off(
    api: APIClient,
) -> None:
    model_id = _deployed(api)
    onprem = Provider.objects.create(name="rack", kind="onprem")
    model = LlmModel.objects.get(id=model_id)
    LlmModel.objects.filter(id=model_id).update(provider=onprem)
    response = api.patch(
        f"/api/v1/model-codes/{model.id}/scaling/",
        {"scale_to_zero_mode": "power_off"},
        format="json",
    )
    assert response.status_code == 400
    assert response.json()["error"]["param"] == "scale_to_zero_mode"
    assert "rack (onprem)" in response.json()["error"]["message"]
    assert LlmModel.objects.get(id=model_id).scale_to_zero_mode == "terminate"


@pytest.mark.parametrize("kind", ["local", "scaleway", "aws", "onprem"])
def test_the_kinds_that_can_power_off_are_the_adapters_that_implement_power(kind: str) -> None:
    provider = Provider(name=f"p-{kind}", kind=kind)
    assert (kind in POWER_KINDS) == get_adapter(provider).supports_power


def test_members_read_the_quota_and_only_operators_set_it(
    api: APIClient, owner_org: Organization, staff: User
) -> None:
    _deployed(api, replicas=2)
    url = f"/api/v1/organizations/{owner_org.slug}/scaling-quota/"
    body = api.get(url).json()
    assert body == {
        "organization": owner_org.slug,
        "max_gpus": None,
        "max_instances": None,
        "used_gpus": 0,
        "used_instances": 2,
    }
    # the organization's owner may not raise its own ceiling
    refused = api.put(url, {"max_gpus": 8, "max_instances": 4}, format="json")
    assert refused.status_code == 403
    assert refused.json()["error"]["code"] == "permission_denied"
    assert not ScalingQuota.objects.filter(organization=owner_org).exists()
    operator = APIClient()
    operator.force_authenticate(staff)
    bad = operator.put(url, {"max_gpus": -1, "max_instances": 4}, format="json")
    assert bad.status_code == 400 and bad.json()["error"]["param"] == "max_gpus"
    done = operator.put(url, {"max_gpus": 8, "max_instances": None}, format="json")
    assert done.status_code == 200, done.json()
    assert (done.json()["max_gpus"], done.json()["max_instances"]) == (8, None)
    assert api.get(url).json()["max_gpus"] == 8
    assert AuditEntry.objects.filter(action="scaling_quota.set").count() == 1
    assert operator.get("/api/v1/organizations/nope/scaling-quota/").status_code == 404


def test_a_policy_change_reaches_the_gateways_at_once(
    api: APIClient, django_capture_on_commit_callbacks: Any
) -> None:
    # given the gateways' group subscribed (they hold at zero from their routing snapshot)
    model_id = _deployed(api)
    layer = get_channel_layer()
    channel = async_to_sync(layer.new_channel)()
    async_to_sync(layer.group_add)(INSTANCE_GROUP, channel)
    # when the policy lets the model code scale to zero
    with django_capture_on_commit_callbacks(execute=True):
        api.patch(
            f"/api/v1/model-codes/{model_id}/scaling/", {"min_replicas": 0, "max_replicas": 2}
        )

    async def receive() -> dict[str, Any]:
        return await asyncio.wait_for(layer.receive(channel), 5)

    # then the event is published, and a gateway's listener reloads its routing table on it
    message = async_to_sync(receive)()
    assert message["event"] == SCALING_POLICY and message["data"]["model_code_id"] == model_id
    reloads: list[bool] = []

    class Directory:
        def schedule_reload(self) -> None:
            reloads.append(True)

    EventListener(Directory(), None).apply(message)  # type: ignore[arg-type]
    assert reloads == [True]

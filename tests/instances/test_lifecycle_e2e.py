"""The model lifecycle end to end, on PostgreSQL and Redis, with real processes: web (agent
API), Celery worker and beat, and real agent subprocesses running the mock engine."""

from __future__ import annotations

import httpx
import pytest
from openai import OpenAI
from rest_framework.test import APIClient

from apps.gateway.services import api_key_create
from apps.instances.choices import InstanceStatus as S
from apps.instances.models import Instance, Provider
from apps.models.choices import ModelStatus
from apps.models.models import LlmModel
from inventiv import crypto
from tests.instances.conftest import Platform, agent_pids, history, wait_status
from tests.processes import wait_for

pytestmark = pytest.mark.slow


def _live(model: LlmModel) -> list[Instance]:
    return list(model.instances.exclude(status__in=[S.TERMINATED]).order_by("created_at"))


def test_a_model_code_is_deployed_scaled_and_decommissioned_end_to_end(
    platform: Platform, api: APIClient, local_provider: Provider
) -> None:
    # Given a mock model code created through the API
    created = api.post(
        "/api/v1/model-codes/",
        {
            "name": "sales-bot",
            "engine": "mock",
            "model_id": "meta-llama/Llama-3.1-8B-Instruct",
            "gpu_count": 0,
            "engine_args": {"default_max_tokens": 5},
        },
    )
    assert created.status_code == 201, created.json()
    model_id = created.json()["id"]
    model = LlmModel.objects.get(id=model_id)

    # When it is deployed with 2 replicas
    response = api.post(f"/api/v1/model-codes/{model_id}/deploy/", {"replicas": 2})
    assert response.status_code == 202
    wait_for(lambda: len(_live(model)) == 2, message="2 instances")
    ids = [str(i.id) for i in _live(model)]
    # Then both become ready
    wait_status(ids, S.READY, timeout=40)
    model.refresh_from_db()
    assert model.status == ModelStatus.ACTIVE

    # And each engine answers a chat completion with its own secret, and only with it
    for instance in Instance.objects.filter(id__in=ids):
        secret = crypto.decrypt(instance.engine_secret_encrypted)
        body = {"model": "sales-bot", "messages": [{"role": "user", "content": "hi"}]}
        ok = httpx.post(
            f"{instance.endpoint}/v1/chat/completions",
            json=body,
            headers={"Authorization": f"Bearer {secret}"},
            timeout=5,
        )
        assert ok.status_code == 200
        assert ok.json()["usage"]["completion_tokens"] == 5
        refused = httpx.post(
            f"{instance.endpoint}/v1/chat/completions",
            json=body,
            headers={"Authorization": "Bearer wrong"},
            timeout=5,
        )
        assert refused.status_code == 401

    # And the gateway (mounted at /v1 of the web process) serves the model code by its name
    _, key = api_key_create(organization=model.organization, name="e2e")
    client = OpenAI(base_url=f"{platform.url}/v1", api_key=key, max_retries=0)
    answers = {
        client.chat.completions.create(
            model="sales-bot", messages=[{"role": "user", "content": f"hi {n}"}]
        ).usage.completion_tokens  # type: ignore[union-attr]
        for n in range(6)
    }
    assert answers == {5}

    # When replicas go to 1, then one instance drains and terminates, its agent gone
    assert api.post(f"/api/v1/model-codes/{model_id}/replicas/", {"replicas": 1}).status_code == 202
    wait_for(
        lambda: Instance.objects.filter(id__in=ids, status=S.TERMINATED).count() == 1,
        timeout=30,
        message="one instance terminated",
    )
    gone = Instance.objects.get(id__in=ids, status=S.TERMINATED)
    kept = Instance.objects.get(id__in=ids, status=S.READY)
    assert agent_pids(str(gone.id)) == []
    assert history(str(gone.id))[-3:] == [S.DRAINING, S.TERMINATING, S.TERMINATED]
    assert agent_pids(str(kept.id))
    # And the gateway keeps answering from the instance that is left
    assert client.completions.create(model="sales-bot", prompt="x").usage.completion_tokens == 5  # type: ignore[union-attr]

    # When the model code is decommissioned, then everything terminates and is archived
    assert api.post(f"/api/v1/model-codes/{model_id}/decommission/").status_code == 202
    wait_for(
        lambda: LlmModel.objects.get(id=model_id).status == ModelStatus.DECOMMISSIONED,
        timeout=30,
        message="decommissioned",
    )
    assert set(model.instances.values_list("status", flat=True)) == {S.TERMINATED}
    assert all(agent_pids(i) == [] for i in ids)
    assert set(model.instances.values_list("archived", flat=True)) == {True}
    full = history(str(kept.id))
    assert full[:4] == [S.PROVISIONING, S.BOOTING, S.STARTING, S.READY]
    assert full[-2:] == [S.TERMINATING, S.TERMINATED]
    detail = api.get(f"/api/v1/instances/{kept.id}/").json()
    assert [e["to_status"] for e in detail["events"]] == full
    assert detail["attempts"][0]["outcome"] == "succeeded"

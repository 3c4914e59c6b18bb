"""The autoscaler on the real platform (web with the gateway mounted, worker, beat, real agents
with the mock engine on the local provider): load through the gateway scales a model code up,
and the scale-down that follows drains an instance without failing any stream in flight."""

from __future__ import annotations

import json
import threading
import time
from typing import Any

import httpx
import pytest
from rest_framework.test import APIClient

from apps.billing.models import UsageRecord
from apps.gateway.services import api_key_create
from apps.instances.choices import LIVE, InstanceStatus
from apps.instances.models import Instance, Provider
from apps.models.models import LlmModel, ScalingDecision
from tests.instances.conftest import Platform
from tests.processes import wait_for

S = InstanceStatus


def _stream(
    url: str, key: str, out: list[dict[str, Any]], lock: threading.Lock, max_tokens: int = 24
) -> None:
    record: dict[str, Any] = {"start": time.monotonic(), "tokens": 0, "done": False}
    record["max_tokens"] = max_tokens
    body = {
        "model": "sales-bot",
        "stream": True,
        "max_tokens": max_tokens,
        "messages": [{"role": "user", "content": "x"}],
    }
    try:
        with httpx.stream(
            "POST",
            url + "/v1/chat/completions",
            json=body,
            headers={"Authorization": f"Bearer {key}"},
            timeout=60,
        ) as response:
            record["status"] = response.status_code
            for line in response.iter_lines():
                if line == "data: [DONE]":
                    record["done"] = True
                elif line.startswith("data:"):
                    chunk = json.loads(line[5:])
                    if any(c["delta"].get("content") for c in chunk.get("choices", [])):
                        record["tokens"] += 1
    except httpx.HTTPError as exc:
        record["status"] = repr(exc)
    record["end"] = time.monotonic()
    with lock:
        out.append(record)


@pytest.mark.slow
def test_load_scales_up_and_the_scale_down_never_fails_a_stream_in_flight(
    platform: Platform, api: APIClient, local_provider: Provider
) -> None:
    created = api.post(
        "/api/v1/model-codes/",
        {
            "name": "sales-bot",
            "engine": "mock",
            "model_id": "meta-llama/Llama-3.1-8B-Instruct",
            "gpu_count": 0,
            "engine_args": {"default_max_tokens": 24, "token_rate": 8},  # 3 s per stream
        },
        format="json",
    )
    model_id = created.json()["id"]
    model = LlmModel.objects.get(id=model_id)
    api.post(f"/api/v1/model-codes/{model_id}/deploy/", {"replicas": 1})
    policy = {
        "min_replicas": 1,
        "max_replicas": 2,
        "target_load_per_replica": 2,
        "scale_up_cooldown_s": 0,
        "scale_down_cooldown_s": 0,
    }
    scaled = api.patch(f"/api/v1/model-codes/{model_id}/scaling/", policy, format="json")
    assert scaled.status_code == 200, scaled.json()
    wait_for(
        lambda: Instance.objects.filter(llm_model=model, status=S.READY).count() == 1,
        timeout=40,
        message="the first replica ready",
    )
    _, key = api_key_create(organization=model.organization, name="load")
    results: list[dict[str, Any]] = []
    lock = threading.Lock()
    threads: list[threading.Thread] = []

    def ready() -> int:
        return Instance.objects.filter(llm_model=model, status=S.READY).count()

    # Given a sustained load of 4 streams (2 per replica wanted) until a second replica serves.
    deadline = time.monotonic() + 60
    while ready() < 2 and time.monotonic() < deadline:
        while sum(t.is_alive() for t in threads) < 4:
            thread = threading.Thread(target=_stream, args=(platform.url, key, results, lock))
            thread.start()
            threads.append(thread)
        time.sleep(0.2)
    assert ready() == 2, "the autoscaler did not add a replica"
    up = ScalingDecision.objects.filter(model_code=model).order_by("id").first()
    assert up is not None and (up.replicas_before, up.replicas_after) == (1, 2)
    # When the load falls to two long streams (8 s each, spread over both replicas by least
    # outstanding requests): the policy wants one replica while both are in flight.
    for thread in threads:
        thread.join(timeout=30)
    for _ in range(2):
        thread = threading.Thread(target=_stream, args=(platform.url, key, results, lock, 64))
        thread.start()
        threads.append(thread)
    wait_for(
        lambda: (
            Instance.objects.filter(llm_model=model, status=S.DRAINING).exists()
            or Instance.objects.filter(llm_model=model, status=S.TERMINATED).exists()
        ),
        timeout=40,
        message="a replica drained",
    )
    drained_at = time.monotonic()
    for thread in threads:
        thread.join(timeout=60)
    # Then every stream, those in flight when the drain began included, ran to its end.
    assert results and all(r["status"] == 200 for r in results), results
    assert all(r["done"] and r["tokens"] == r["max_tokens"] for r in results), results
    assert any(r["start"] < drained_at < r["end"] for r in results)
    down = ScalingDecision.objects.filter(model_code=model, replicas_after=1).first()
    assert down is not None and down.replicas_before == 2
    assert down.inputs["max_replicas"] == 2 and "load" in down.reason
    wait_for(
        lambda: Instance.objects.filter(llm_model=model, status=S.TERMINATED).count() == 1,
        timeout=40,
        message="the drained replica terminated",
    )
    gone = Instance.objects.get(llm_model=model, status=S.TERMINATED)
    statuses = list(gone.events.order_by("id").values_list("to_status", flat=True))
    assert statuses[-3:] == [S.DRAINING, S.TERMINATING, S.TERMINATED]
    # And a long stream served by the drained replica was billed whole.
    wait_for(
        lambda: UsageRecord.objects.filter(instance_id=gone.id, completion_tokens=64).exists(),
        timeout=20,
        message="the drained replica's long stream recorded",
    )
    for record in UsageRecord.objects.filter(instance_id=gone.id, completion_tokens=64):
        assert record.status_code == 200 and not record.error_code
    assert Instance.objects.filter(llm_model=model, status__in=LIVE).count() == 1

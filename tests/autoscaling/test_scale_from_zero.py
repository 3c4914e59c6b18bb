"""Scale from zero through two real gateway processes: requests held in a bounded queue, exactly
one wake command, SSE progress comments while held, 429/503 with Retry-After, and a client that
leaves the queue."""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Callable
from typing import Any

import httpx
import pytest
import redis
from django.conf import settings

from apps.accounts.models import Organization
from apps.gateway.capacity import load_board
from apps.instances.models import Provider
from apps.instances.orchestrator.autoscaler import WAKE, autoscale_model_code
from apps.models.models import LlmModel, ScalingDecision
from tests.gateway.conftest import make_model_code
from tests.processes import wait_for

WAKE_TASK = "apps.instances.tasks.autoscale_wake_task"


def _wake_commands() -> list[dict[str, Any]]:
    """The wake commands waiting in the Celery broker (no worker runs in this test)."""
    client = redis.Redis.from_url(settings.REDIS_URL)
    try:
        raw = client.lrange(settings.REDIS_PREFIX + "celery:celery", 0, -1)
    finally:
        client.close()
    messages = [json.loads(m) for m in raw]
    return [m for m in messages if m.get("headers", {}).get("task") == WAKE_TASK]


def _at_zero(org: Organization, **policy: Any) -> LlmModel:
    Provider.objects.get_or_create(name="local", kind="local")
    return make_model_code(
        org, min_replicas=0, max_replicas=2, desired_replicas=0, scale_up_cooldown_s=0, **policy
    )


def _chat(url: str, key: str, results: list[dict[str, Any]], lock: threading.Lock) -> None:
    body = {"model": "sales-bot", "stream": True, "messages": [{"role": "user", "content": "hi"}]}
    out: dict[str, Any] = {"comments": 0, "data": 0}
    try:
        with httpx.stream(
            "POST",
            url + "/v1/chat/completions",
            json=body,
            headers={"Authorization": f"Bearer {key}"},
            timeout=60,
        ) as response:
            out["status"] = response.status_code
            out["retry_after"] = response.headers.get("retry-after")
            for line in response.iter_lines():
                if line.startswith(": waking"):
                    out["comments"] += 1
                elif line.startswith("data:"):
                    out["data"] += 1
                    out.setdefault("first", line)
    except httpx.HTTPError as exc:
        out["status"] = repr(exc)
    with lock:
        results.append(out)


@pytest.mark.slow
def test_fifty_requests_at_zero_through_two_gateways_wake_it_exactly_once(
    owner_org: Organization,
    new_key: Callable[..., Any],
    start_engine: Callable[..., Any],
    start_gateway: Callable[..., Any],
) -> None:
    model = _at_zero(owner_org, hold_timeout_s=60, target_load_per_replica=100)
    _, key = new_key()
    env = {
        "GATEWAY_ROUTING_REFRESH_S": "0.3",
        "GATEWAY_HOLD_QUEUE_MAX": "20",
        "GATEWAY_HOLD_COMMENT_S": "0.2",
    }
    gateways = [start_gateway(**env), start_gateway(**env)]
    results: list[dict[str, Any]] = []
    lock = threading.Lock()
    threads = [
        threading.Thread(target=_chat, args=(gateways[n % 2].url, key, results, lock))
        for n in range(50)
    ]
    for thread in threads:
        thread.start()
    # The held requests woke the model code once: one command, however many gateways hold.
    wait_for(lambda: len(_wake_commands()) >= 1, timeout=15)
    # Every gateway holds its 20 (the queue's bound), the other 5 each were refused.
    wait_for(lambda: load_board().read(model_code_id=model.id).held == 40, timeout=15)
    time.sleep(0.5)
    assert len(_wake_commands()) == 1
    # The worker's side of the command: one decision 0 -> 1 from the held load.
    decision = autoscale_model_code(model_code_id=model.id, trigger=WAKE)
    assert decision is not None and (decision.replicas_before, decision.replicas_after) == (0, 1)
    assert decision.inputs["gateway_held"] == 40
    assert autoscale_model_code(model_code_id=model.id, trigger=WAKE) is None  # twice: no-op
    # The machine comes up (the mock engine as its ready instance).
    start_engine(model)
    for thread in threads:
        thread.join(timeout=60)
    statuses = sorted(str(r["status"]) for r in results)
    assert statuses.count("200") == 40, statuses
    assert statuses.count("429") == 10, statuses
    refused = [r for r in results if r["status"] == 429]
    assert all(r["retry_after"] for r in refused)
    served = [r for r in results if r["status"] == 200]
    assert all(r["data"] >= 2 for r in served)  # tokens and [DONE]
    assert all(r["comments"] >= 1 for r in served)  # progress while held
    assert ScalingDecision.objects.filter(model_code=model).count() == 1


@pytest.mark.slow
def test_a_held_request_gets_503_with_retry_after_when_the_wait_runs_out(
    owner_org: Organization, new_key: Callable[..., Any], start_gateway: Callable[..., Any]
) -> None:
    _at_zero(owner_org, hold_timeout_s=1)
    _, key = new_key()
    gateway = start_gateway()
    started = time.monotonic()
    response = httpx.post(
        gateway.url + "/v1/chat/completions",
        json={"model": "sales-bot", "messages": [{"role": "user", "content": "hi"}]},
        headers={"Authorization": f"Bearer {key}"},
        timeout=30,
    )
    assert response.status_code == 503
    assert response.json()["error"]["code"] == "model_unavailable"
    assert response.headers["retry-after"]
    assert 0.9 < time.monotonic() - started < 10


@pytest.mark.slow
def test_a_client_that_disconnects_leaves_the_queue(
    owner_org: Organization, new_key: Callable[..., Any], start_gateway: Callable[..., Any]
) -> None:
    model = _at_zero(owner_org, hold_timeout_s=60)
    _, key = new_key()
    gateway = start_gateway(GATEWAY_HOLD_QUEUE_MAX="1", GATEWAY_LOAD_PUBLISH_S="0.2")
    body = {"model": "sales-bot", "messages": [{"role": "user", "content": "hi"}]}
    headers = {"Authorization": f"Bearer {key}"}
    with pytest.raises(httpx.ReadTimeout):  # held, then the client gives up
        httpx.post(gateway.url + "/v1/chat/completions", json=body, headers=headers, timeout=1)
    wait_for(lambda: load_board().read(model_code_id=model.id).held == 0, timeout=10)
    # The queue (of one) is free again: the next request is held, not refused with 429.
    with pytest.raises(httpx.ReadTimeout):
        httpx.post(gateway.url + "/v1/chat/completions", json=body, headers=headers, timeout=1)

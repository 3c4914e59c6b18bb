"""The latency bound as a signal: each gateway measures the time to first token of the requests
it passes to an engine (not those held at zero), shares the samples per model code (Redis, or
in-process for the embedded mode), and the autoscaler scales up while their p95 over the
policy's window passes ``ttft_p95_bound_ms``, recording it in the decision's inputs."""

from __future__ import annotations

import asyncio
import threading
import time
from collections.abc import Callable
from typing import Any

import httpx
import pytest
import redis
from django.conf import settings
from django.utils import timezone

from apps.accounts.models import Organization
from apps.gateway import capacity as capacity_module
from apps.gateway.capacity import Capacity, InProcessLoadBoard, Load, RedisLoadBoard, p95
from apps.instances.models import Instance, Provider
from apps.instances.orchestrator.autoscaler import autoscale_evaluate, autoscale_model_code
from apps.models.models import LlmModel
from apps.models.services import model_create, model_deploy, model_set_scaling_policy
from tests.gateway.conftest import make_model_code
from tests.processes import wait_for

pytestmark = pytest.mark.django_db


def _capacity() -> Capacity:
    async def wake(model_code_id: int) -> None:
        return None

    async def progress(model_code_id: int) -> str:
        return "booting"

    capacity = Capacity("gw-latency", wake, progress)
    capacity.board = InProcessLoadBoard()
    return capacity


def test_p95_is_the_nearest_rank() -> None:
    assert p95([]) is None
    assert p95([0.3]) == 0.3
    assert p95([float(n) for n in range(1, 101)]) == 95.0
    assert p95([0.1] * 19 + [9.0]) == 0.1  # one slow request in 20 is the 100th percentile


def test_a_gateway_samples_served_requests_only_and_the_board_gives_their_p95() -> None:
    # given requests passed to an engine, one held at zero first, one that got no token
    capacity = _capacity()
    for ttft in (0.1, 0.2, 0.3, 0.4):
        with capacity.counting(7) as sample:
            sample.ttft = ttft
    with capacity.counting(7) as sample:
        sample.held, sample.ttft = True, 60.0  # a cold start: not the engines' latency
    with capacity.counting(7):
        pass  # an error before the first token
    # when the gateway publishes, then the board has the served requests' samples
    asyncio.run(capacity.publish())
    assert capacity.board is not None
    load = capacity.board.read(model_code_id=7, ttft_window_s=60)
    assert (load.ttft_p95_ms, load.ttft_samples) == (400.0, 4)
    # and without a window nothing is computed; another model code has none
    assert capacity.board.read(model_code_id=7).ttft_p95_ms is None
    assert capacity.board.read(model_code_id=8, ttft_window_s=60).ttft_samples == 0
    # and the next publish does not send the same samples again
    asyncio.run(capacity.publish())
    assert capacity.board.read(model_code_id=7, ttft_window_s=60).ttft_samples == 4


def _samples(gateway: str, ttft: dict[int, list[float]], counts: Any = None) -> None:
    """One gateway's publish (a new board: its async client belongs to one event loop)."""
    board = RedisLoadBoard()
    asyncio.run(
        board.publish(gateway_id=gateway, counts=counts or {}, requested=set(ttft), ttft=ttft)
    )


def test_the_redis_board_merges_gateways_within_the_window_and_keeps_a_bounded_list(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    _samples("a", {5: [0.1, 0.2, 0.3]})
    _samples("b", {5: [0.9, 1.2]})
    board = RedisLoadBoard()
    load = board.read(model_code_id=5, ttft_window_s=30)
    assert (load.ttft_samples, load.ttft_p95_ms) == (5, 1200.0)
    # a sample older than the window is left out
    client = redis.Redis.from_url(settings.REDIS_URL)
    key = settings.REDIS_PREFIX + "gw:load:ttft:5"
    client.rpush(key, f"{time.time() - 120} 9.0")
    assert board.read(model_code_id=5, ttft_window_s=30).ttft_samples == 5
    assert board.read(model_code_id=5, ttft_window_s=300).ttft_p95_ms == 9000.0
    assert 0 < client.ttl(key) <= capacity_module.TTFT_KEEP_S
    # the list keeps the newest samples only
    monkeypatch.setattr(capacity_module, "TTFT_KEEP", 4)
    _samples("a", {5: [0.5]})
    assert client.llen(key) == 4
    client.close()


def _deployed(org: Organization, **policy: Any) -> LlmModel:
    Provider.objects.get_or_create(name="local", kind="local")
    model = model_create(
        organization=org, name="sales-bot", engine="mock", model_id="org/model", gpu_count=0
    )
    model_deploy(model=model, replicas=1)
    return model_set_scaling_policy(
        model=model,
        **{
            "min_replicas": 1,
            "max_replicas": 3,
            "target_load_per_replica": 100,  # the load alone wants one replica
            "scale_up_cooldown_s": 0,
            "scale_down_cooldown_s": 0,
            **policy,
        },
    )


def _ready(model: LlmModel) -> None:
    from apps.instances.orchestrator.scaling import model_code_converge

    model_code_converge(model_code_id=model.id)
    Instance.objects.filter(llm_model=model).update(
        status="ready", last_heartbeat_at=timezone.now(), engine_metrics={}
    )


def test_the_autoscaler_scales_up_while_the_p95_passes_the_bound(owner_org: Organization) -> None:
    # given one ready replica and a bound of 500 ms over 60 s
    model = _deployed(owner_org, ttft_p95_bound_ms=500, latency_window_s=60)
    _ready(model)
    now = timezone.now()
    # when the p95 is under the bound, or too few requests say it, then nothing changes
    fast = Load(inflight=2, ttft_p95_ms=200.0, ttft_samples=50)
    assert autoscale_evaluate(model=model, load=fast, now=now, trigger="periodic")[0] == 1
    few = Load(inflight=2, ttft_p95_ms=2000.0, ttft_samples=4)
    assert autoscale_evaluate(model=model, load=few, now=now, trigger="periodic")[0] == 1
    # when the gateways' samples put the p95 over it, then one more replica than ready
    _samples("g", {model.id: [0.2] * 10 + [0.9, 1.1]}, counts={model.id: (2, 0)})  # p95 1.1 s
    decision = autoscale_model_code(model_code_id=model.id)
    assert decision is not None and (decision.replicas_before, decision.replicas_after) == (1, 2)
    assert "TTFT p95 1100 ms > 500 ms (12 requests in 60s)" in decision.reason
    assert decision.inputs["ttft_p95_ms"] == 1100.0 and decision.inputs["ttft_samples"] == 12
    assert decision.inputs["ttft_p95_bound_ms"] == 500
    # and while the new replica boots, the same p95 asks for no third one
    assert autoscale_model_code(model_code_id=model.id) is None


def test_without_a_bound_the_latency_is_not_a_signal(owner_org: Organization) -> None:
    model = _deployed(owner_org)
    _ready(model)
    slow = Load(inflight=2, ttft_p95_ms=9000.0, ttft_samples=100)
    wanted, _, inputs = autoscale_evaluate(
        model=model, load=slow, now=timezone.now(), trigger="periodic"
    )
    assert wanted == 1 and inputs["ttft_p95_bound_ms"] is None


@pytest.mark.slow
def test_a_real_gateway_measures_the_time_to_first_token_per_model_code(
    owner_org: Organization,
    new_key: Callable[..., Any],
    start_engine: Callable[..., Any],
    start_gateway: Callable[..., Any],
) -> None:
    # given a model code behind a gateway, its bound at 1 ms (the mock engine's first chunk, the
    # role, comes at once: any real measurement passes it)
    model = make_model_code(owner_org, min_replicas=1, max_replicas=2, ttft_p95_bound_ms=1)
    start_engine(model, token_rate=4, max_tokens=2)
    _, key = new_key()
    gateway = start_gateway(GATEWAY_ROUTING_REFRESH_S="0.3", GATEWAY_LOAD_PUBLISH_S="0.2")
    body = {"model": "sales-bot", "stream": True, "messages": [{"role": "user", "content": "x"}]}
    statuses: list[int] = []

    def stream() -> None:
        with httpx.stream(
            "POST",
            gateway.url + "/v1/chat/completions",
            json=body,
            headers={"Authorization": f"Bearer {key}"},
            timeout=30,
        ) as response:
            for _ in response.iter_lines():
                pass
            statuses.append(response.status_code)

    # when six streams are served
    threads = [threading.Thread(target=stream) for _ in range(6)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=30)
    assert statuses == [200] * 6
    # then the board has the six samples
    board = RedisLoadBoard()
    wait_for(
        lambda: board.read(model_code_id=model.id, ttft_window_s=60).ttft_samples == 6,
        timeout=10,
        message="the gateway's six samples on the board",
    )
    load = board.read(model_code_id=model.id, ttft_window_s=60)
    assert load.ttft_p95_ms is not None and 1 < load.ttft_p95_ms < 5000
    # and the autoscaler wants a second replica
    decision = autoscale_model_code(model_code_id=model.id)
    assert decision is not None and decision.replicas_after == 2
    assert decision.inputs["ttft_p95_ms"] == load.ttft_p95_ms

"""The autoscaler on real PostgreSQL and Redis: a load ramp up, down and to zero, every decision
recorded with its inputs; cooldowns, bounds, quota and schedules; one wake across gateways."""

from __future__ import annotations

import asyncio
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from django.utils import timezone

from apps.accounts.models import Organization
from apps.gateway.capacity import Load, RedisLoadBoard, load_board
from apps.instances.choices import LIVE
from apps.instances.models import Instance, Provider
from apps.instances.orchestrator.autoscaler import (
    WAKE,
    autoscale_all,
    autoscale_evaluate,
    autoscale_model_code,
    scheduled_minimum,
)
from apps.instances.orchestrator.scaling import model_code_converge
from apps.models.models import LlmModel, ScalingDecision
from apps.models.services import (
    model_create,
    model_deploy,
    model_set_scaling_policy,
    scaling_quota_set,
)

pytestmark = pytest.mark.django_db


def _model(org: Organization, replicas: int = 1, **policy: Any) -> LlmModel:
    Provider.objects.get_or_create(name="local", kind="local")
    model = model_create(
        organization=org, name="sales-bot", engine="mock", model_id="org/model", gpu_count=0
    )
    model_deploy(model=model, replicas=replicas)
    defaults = {"scale_up_cooldown_s": 0, "scale_down_cooldown_s": 0, "idle_to_zero_s": 60}
    model = model_set_scaling_policy(model=model, **{**defaults, **policy})
    model_code_converge(model_code_id=model.id)
    return model


def _serve(model: LlmModel, running: float = 0.0, waiting: float = 0.0) -> None:
    """Every live instance ready, the load spread over their heartbeats' engine metrics."""
    live = list(Instance.objects.filter(llm_model=model, status__in=LIVE))
    for n, instance in enumerate(live):
        share = 1.0 if n == 0 else 0.0
        Instance.objects.filter(id=instance.id).update(
            status="ready",
            last_heartbeat_at=timezone.now(),
            engine_metrics={
                "requests_running": running * share,
                "requests_waiting": waiting * share,
                "kv_cache_usage": 0.1,
            },
        )


def _publish(counts: dict[int, tuple[int, int]], requested: set[int], gateway: str = "g1") -> None:
    asyncio.run(RedisLoadBoard().publish(gateway_id=gateway, counts=counts, requested=requested))


def _live(model: LlmModel) -> int:
    return Instance.objects.filter(llm_model=model, status__in=LIVE).count()


def test_a_load_ramp_scales_up_down_and_to_zero_recording_every_decision(
    owner_org: Organization,
) -> None:
    model = _model(owner_org, min_replicas=0, max_replicas=4, target_load_per_replica=4)
    assert _live(model) == 1
    # Given 12 requests at the engine (3 running, 9 waiting) and 12 in flight at a gateway:
    _serve(model, running=3, waiting=9)
    _publish({model.id: (12, 0)}, {model.id})
    # When the reconciler's autoscaler runs, then it wants ceil(12 / 4) = 3 and creates two.
    assert autoscale_all() == 1
    up = ScalingDecision.objects.get(model_code=model)
    assert (up.replicas_before, up.replicas_after, up.trigger) == (1, 3, "periodic")
    assert up.inputs["engine_running"] == 3 and up.inputs["engine_waiting"] == 9
    assert up.inputs["gateway_inflight"] == 12
    assert "load 12" in up.reason
    assert _live(model) == 3
    # Load gone, but a request came just now: down to 1 (not zero), the surplus drains.
    _serve(model)
    _publish({}, {model.id})
    down = autoscale_model_code(model_code_id=model.id)
    assert down is not None and (down.replicas_before, down.replicas_after) == (3, 1)
    assert _live(model) == 1
    assert Instance.objects.filter(llm_model=model, status="draining").count() == 2
    # Still idle 30 s later (< idle_to_zero_s 60): stays at 1.
    later = timezone.now() + timedelta(seconds=30)
    assert autoscale_model_code(model_code_id=model.id, now=later) is None
    # 120 s later: to zero, the reason says idle.
    zero = autoscale_model_code(model_code_id=model.id, now=timezone.now() + timedelta(seconds=120))
    assert zero is not None and (zero.replicas_before, zero.replicas_after) == (1, 0)
    assert "idle" in zero.reason
    assert LlmModel.objects.get(id=model.id).desired_replicas == 0
    assert _live(model) == 0
    assert list(
        ScalingDecision.objects.filter(model_code=model)
        .order_by("created_at", "id")
        .values_list("replicas_before", "replicas_after")
    ) == [(1, 3), (3, 1), (1, 0)]


def test_a_held_request_wakes_a_model_code_at_zero_despite_the_cooldown(
    owner_org: Organization,
) -> None:
    model = _model(owner_org, replicas=0, scale_up_cooldown_s=3600, max_replicas=2)
    assert _live(model) == 0
    ScalingDecision.objects.create(
        model_code=model, trigger="periodic", replicas_before=1, replicas_after=0, reason="x"
    )
    _publish({model.id: (0, 5)}, {model.id})
    # Periodic: the cooldown holds it. Woken: it scales to ceil(5/8) = 1 at once.
    assert autoscale_model_code(model_code_id=model.id) is None
    woken = autoscale_model_code(model_code_id=model.id, trigger=WAKE)
    assert woken is not None and (woken.replicas_before, woken.replicas_after) == (0, 1)
    assert "5 request(s) held" in woken.reason
    assert _live(model) == 1


def test_cooldowns_hold_an_oscillating_load(owner_org: Organization) -> None:
    model = _model(
        owner_org,
        max_replicas=4,
        target_load_per_replica=2,
        scale_up_cooldown_s=60,
        scale_down_cooldown_s=300,
    )
    _serve(model, running=8)
    first = autoscale_model_code(model_code_id=model.id)
    assert first is not None and first.replicas_after == 4
    for running in (0, 8, 0, 8):  # oscillating within the cooldowns: no decision
        _serve(model, running=running)
        assert autoscale_model_code(model_code_id=model.id) is None
    # After the scale-down cooldown the low load is acted on.
    _serve(model, running=0)
    _publish({}, {model.id})
    late = autoscale_model_code(model_code_id=model.id, now=timezone.now() + timedelta(seconds=301))
    assert late is not None and late.replicas_after == 1
    assert ScalingDecision.objects.filter(model_code=model).count() == 2


def test_bounds_and_the_organization_quota_are_never_exceeded(owner_org: Organization) -> None:
    model = _model(owner_org, max_replicas=3, target_load_per_replica=1)
    _serve(model, running=50)
    decision = autoscale_model_code(model_code_id=model.id)
    assert decision is not None and decision.replicas_after == 3  # max_replicas
    scaling_quota_set(organization=owner_org, max_gpus=None, max_instances=2)
    LlmModel.objects.filter(id=model.id).update(desired_replicas=1)
    model.refresh_from_db()
    wanted, reason, inputs = autoscale_evaluate(
        model=model, load=Load(50, 0, None), now=timezone.now(), trigger="periodic"
    )
    assert wanted == 2 and inputs["quota_room"] == 2 and "quota" in reason


def test_a_schedule_keeps_a_minimum_in_its_time_zone(owner_org: Organization) -> None:
    model = _model(
        owner_org,
        min_replicas=0,
        max_replicas=3,
        scale_timezone="Europe/Paris",
        scale_schedules=[
            {"days": [0, 1, 2, 3, 4], "start": "08:00", "end": "19:00", "min_replicas": 2}
        ],
    )
    # Tuesday 2026-12-01 07:30 UTC is 08:30 in Paris (UTC+1): inside; 18:30 UTC is outside.
    inside = datetime(2026, 12, 1, 7, 30, tzinfo=UTC)
    outside = datetime(2026, 12, 1, 18, 30, tzinfo=UTC)
    saturday = datetime(2026, 12, 5, 9, 0, tzinfo=UTC)
    assert scheduled_minimum(model, inside) == 2
    assert scheduled_minimum(model, outside) == 0
    assert scheduled_minimum(model, saturday) == 0
    wanted, reason, _ = autoscale_evaluate(model=model, load=Load(), now=inside, trigger="periodic")
    assert wanted == 2 and "schedule minimum 2" in reason


def test_a_manual_replica_count_is_left_alone(owner_org: Organization) -> None:
    model = _model(owner_org, replicas=2, min_replicas=2, max_replicas=2)
    _serve(model, running=100)
    assert autoscale_all() == 0
    assert ScalingDecision.objects.count() == 0


def test_a_dead_gateways_counts_vanish_and_sums_cover_live_ones(settings: Any) -> None:
    settings.GATEWAY_LOAD_TTL_S = 0.3
    _publish({7: (3, 1)}, {7}, gateway="a")
    _publish({7: (2, 4)}, set(), gateway="b")
    load = load_board().read(model_code_id=7)
    assert (load.inflight, load.held) == (5, 5) and load.last_request_at is not None
    import time

    time.sleep(0.4)
    assert load_board().read(model_code_id=7).inflight == 0


def test_exactly_one_of_many_gateways_takes_the_wake() -> None:
    async def race() -> list[bool]:
        boards = [RedisLoadBoard() for _ in range(10)]
        return await asyncio.gather(
            *(b.take_wake(model_code_id=42, ttl_s=30) for b in boards for _ in range(5))
        )

    results = asyncio.run(race())
    assert results.count(True) == 1
    load_board().clear_wake(model_code_id=42)
    assert asyncio.run(RedisLoadBoard().take_wake(model_code_id=42, ttl_s=30)) is True

"""The autoscaler: a model code's desired replicas from its load, within its scaling policy.

Evaluated for every deployed model code whose policy lets it move (min < max, min 0, or a
schedule) on each reconcile pass, and at once when a gateway holds a request for a model code
at zero (``autoscale_wake_task``). Inputs: the engines' own metrics from heartbeats
(``num_requests_running`` + ``num_requests_waiting``, KV-cache use) of the ready instances,
and the gateways' in-flight and held counts, last request time and time to first token
(``apps.gateway.capacity``).

The rule (docs/autoscaling.md):

* load = max(engines' running + waiting, gateways' in flight less held) + held;
  wanted = ceil(load / target_load_per_replica), one more than ready when the mean KV-cache use
  passes ``target_kv_cache_usage``, or when the gateways' time to first token p95 over
  ``latency_window_s`` (at least ``LATENCY_MIN_SAMPLES`` requests) passes ``ttft_p95_bound_ms``;
* the floor is ``min_replicas`` raised by the schedules active now in ``scale_timezone``;
  a held request makes it at least 1; with no load the count stays at least 1 until no request
  came for ``idle_to_zero_s``, then goes to the floor (zero when the floor is zero);
* clamped to [floor, max_replicas] and to the organization's quota (instances, GPUs) counting
  its other model codes' desired replicas;
* cooldowns: no scale-up within ``scale_up_cooldown_s`` of the last change, no scale-down
  within ``scale_down_cooldown_s`` of it; a wake from zero ignores the cooldown.

Each change is a compare-and-set on ``desired_replicas`` (``apps.models.services
.model_autoscale``: a manual scale in between wins), recorded as a ``ScalingDecision`` with its
inputs, published, and applied through the converge path a manual scale uses (scale-down drains
instances: they take no new requests and stop once their in-flight requests are done).
"""

from __future__ import annotations

import logging
import math
from datetime import datetime, timedelta
from typing import Any
from zoneinfo import ZoneInfo

from django.db.models import F, Q, Sum
from django.utils import timezone

from apps.gateway.capacity import Load, load_board
from apps.instances.choices import InstanceStatus
from apps.instances.models import Instance
from apps.instances.orchestrator.scaling import model_code_converge
from apps.models.choices import DEPLOYED_STATUSES
from apps.models.models import LlmModel, ScalingDecision, ScalingQuota
from apps.models.services import model_autoscale

logger = logging.getLogger("apps.instances.autoscaler")
S = InstanceStatus

PERIODIC = "periodic"
WAKE = "wake"
# Fewer time-to-first-token samples than this in the window say nothing about a p95.
LATENCY_MIN_SAMPLES = 5


def scheduled_minimum(model: LlmModel, now: datetime) -> int:
    """The highest ``min_replicas`` of the schedules active at ``now`` in the policy's zone."""
    local = now.astimezone(ZoneInfo(model.scale_timezone))
    hhmm = local.strftime("%H:%M")
    best = 0
    for item in model.scale_schedules or []:
        if local.weekday() in item["days"] and item["start"] <= hhmm < item["end"]:
            best = max(best, int(item["min_replicas"]))
    return best


def _engine_signals(model: LlmModel, now: datetime, fresh_s: float) -> dict[str, Any]:
    rows = Instance.objects.filter(
        llm_model=model, status=S.READY, last_heartbeat_at__gte=now - timedelta(seconds=fresh_s)
    ).values_list("engine_metrics", flat=True)
    running = waiting = 0.0
    kv: list[float] = []
    for metrics in rows:
        metrics = metrics or {}
        running += float(metrics.get("requests_running", 0.0))
        waiting += float(metrics.get("requests_waiting", 0.0))
        kv.append(float(metrics.get("kv_cache_usage", 0.0)))
    return {
        "engine_running": running,
        "engine_waiting": waiting,
        "kv_cache_mean": round(sum(kv) / len(kv), 4) if kv else None,
    }


def _quota_room(model: LlmModel) -> int | None:
    """How many replicas this model code may have under its organization's quota, or None."""
    quota = ScalingQuota.objects.filter(organization_id=model.organization_id).first()
    if quota is None or (quota.max_instances is None and quota.max_gpus is None):
        return None
    others = LlmModel.objects.filter(
        organization_id=model.organization_id, status__in=DEPLOYED_STATUSES
    ).exclude(id=model.id)
    room: int | None = None
    if quota.max_instances is not None:
        used = others.aggregate(n=Sum("desired_replicas"))["n"] or 0
        room = max(0, quota.max_instances - used)
    if quota.max_gpus is not None and model.gpu_count > 0:
        used_gpus = others.aggregate(n=Sum(F("desired_replicas") * F("gpu_count")))["n"] or 0
        by_gpus = max(0, (quota.max_gpus - used_gpus) // model.gpu_count)
        room = by_gpus if room is None else min(room, by_gpus)
    return room


def autoscale_evaluate(
    *, model: LlmModel, load: Load, now: datetime, trigger: str
) -> tuple[int, str, dict[str, Any]]:
    """The replica count the policy wants now, why, and the inputs (no writes)."""
    current = model.desired_replicas
    engine = _engine_signals(model, now, fresh_s=30.0)
    # The gateways' in-flight count includes their held requests: those count once.
    passed = float(max(load.inflight - load.held, 0))
    total = max(engine["engine_running"] + engine["engine_waiting"], passed) + load.held
    wanted = math.ceil(total / max(model.target_load_per_replica, 1))
    reasons = [f"load {total:g} / target {model.target_load_per_replica} per replica"]
    kv = engine["kv_cache_mean"]
    if (
        model.target_kv_cache_usage is not None
        and kv is not None
        and kv > model.target_kv_cache_usage
    ):
        ready = Instance.objects.filter(llm_model=model, status=S.READY).count()
        wanted = max(wanted, ready + 1)
        reasons.append(f"KV cache {kv:.0%} > {model.target_kv_cache_usage:.0%}")
    bound = model.ttft_p95_bound_ms
    if (
        bound is not None
        and load.ttft_p95_ms is not None
        and load.ttft_samples >= LATENCY_MIN_SAMPLES
        and load.ttft_p95_ms > bound
    ):
        ready = Instance.objects.filter(llm_model=model, status=S.READY).count()
        wanted = max(wanted, ready + 1)
        reasons.append(
            f"TTFT p95 {load.ttft_p95_ms:.0f} ms > {bound} ms "
            f"({load.ttft_samples} requests in {model.latency_window_s}s)"
        )
    floor = max(model.min_replicas, scheduled_minimum(model, now))
    if floor > model.min_replicas:
        reasons.append(f"schedule minimum {floor}")
    idle_s = now.timestamp() - load.last_request_at if load.last_request_at else None
    if load.held:
        wanted = max(wanted, 1)
        reasons.append(f"{load.held} request(s) held")
    elif wanted == 0 and current > 0 and total == 0:
        if idle_s is not None and idle_s < model.idle_to_zero_s:
            wanted = max(floor, 1)
            reasons.append(f"idle {idle_s:.0f}s < {model.idle_to_zero_s}s")
        else:
            reasons.append("idle" if idle_s is None else f"idle {idle_s:.0f}s")
    wanted = min(max(wanted, floor), model.max_replicas)
    room = _quota_room(model)
    if room is not None and wanted > current and wanted > room:
        wanted = max(min(wanted, room), min(current, wanted))
        reasons.append(f"organization quota allows {room}")
    inputs = {
        **engine,
        "gateway_inflight": load.inflight,
        "gateway_held": load.held,
        "ttft_p95_ms": load.ttft_p95_ms,
        "ttft_samples": load.ttft_samples,
        "ttft_p95_bound_ms": bound,
        "idle_s": round(idle_s, 1) if idle_s is not None else None,
        "floor": floor,
        "max_replicas": model.max_replicas,
        "quota_room": room,
        "trigger": trigger,
    }
    return wanted, "; ".join(reasons), inputs


def _in_cooldown(model: LlmModel, wanted: int, now: datetime, trigger: str) -> str | None:
    last = (
        ScalingDecision.objects.filter(model_code=model)
        .order_by("-created_at")
        .values_list("created_at", flat=True)
        .first()
    )
    if last is None:
        return None
    since = (now - last).total_seconds()
    if wanted > model.desired_replicas:
        if model.desired_replicas == 0 and trigger == WAKE:
            return None
        if since < model.scale_up_cooldown_s:
            return f"scale-up cooldown ({since:.0f}s < {model.scale_up_cooldown_s}s)"
    elif since < model.scale_down_cooldown_s:
        return f"scale-down cooldown ({since:.0f}s < {model.scale_down_cooldown_s}s)"
    return None


def autoscale_model_code(
    *, model_code_id: int, trigger: str = PERIODIC, now: datetime | None = None
) -> ScalingDecision | None:
    """Evaluate one model code and apply a change (converge at once). Returns the decision,
    or None when nothing changed (steady, cooldown, a concurrent writer)."""
    now = now or timezone.now()
    model = LlmModel.objects.filter(id=model_code_id, status__in=DEPLOYED_STATUSES).first()
    if model is None:
        return None
    board = load_board()
    window = float(model.latency_window_s) if model.ttft_p95_bound_ms is not None else None
    load = board.read(model_code_id=model.id, ttft_window_s=window)
    wanted, reason, inputs = autoscale_evaluate(model=model, load=load, now=now, trigger=trigger)
    if wanted > 0 and Instance.objects.filter(llm_model=model, status=S.READY).exists():
        board.clear_wake(model_code_id=model.id)
    if wanted == model.desired_replicas:
        return None
    blocked = _in_cooldown(model, wanted, now, trigger)
    if blocked:
        logger.debug("model code %s: %s", model.id, blocked)
        return None
    decision = model_autoscale(
        model_code_id=model.id,
        expected=model.desired_replicas,
        replicas=wanted,
        reason=reason,
        trigger=trigger,
        inputs=inputs,
    )
    if decision is not None:
        model_code_converge(model_code_id=model.id)
    return decision


def autoscale_all(*, now: datetime | None = None) -> int:
    """One periodic pass over the model codes whose policy lets them move; returns changes."""
    movable = LlmModel.objects.filter(status__in=DEPLOYED_STATUSES).filter(
        Q(min_replicas__lt=F("max_replicas")) | Q(min_replicas=0) | ~Q(scale_schedules=[])
    )
    changes = 0
    for model_code_id in movable.values_list("id", flat=True):
        try:
            if autoscale_model_code(model_code_id=model_code_id, now=now) is not None:
                changes += 1
        except Exception:  # one broken model code must not stop the others
            logger.exception("autoscaling model code %s failed", model_code_id)
    return changes

"""Converging a model code's instances to its desired replicas, under a row lock on the model
code so that concurrent callers never create duplicates; finishing decommissions."""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import timedelta
from typing import Any

from django.conf import settings
from django.db import transaction
from django.utils import timezone

from apps.instances.choices import HOLDS_MACHINE, LIVE, InstanceStatus
from apps.instances.models import Instance
from apps.instances.providers.placement import provider_for_model
from apps.instances.services import (
    instance_create,
    instance_drain,
    instance_power_on_to_wake,
    instance_request_termination,
)
from apps.models.choices import DEPLOYED_STATUSES, ModelStatus, ScaleToZeroMode
from apps.models.models import LlmModel
from apps.models.services import model_transition

S = InstanceStatus


def _replacement_backoff_s(model: LlmModel, now: Any) -> float:
    """Exponential backoff after consecutive failures of this model code's instances."""
    recent = (
        Instance.objects.filter(llm_model=model, created_at__gte=now - timedelta(minutes=30))
        .order_by("-created_at")
        .values_list("failure_reason", flat=True)[:6]
    )
    failures = 0
    for reason in recent:
        if not reason:
            break
        failures += 1
    if failures == 0:
        return 0.0
    return float(min(settings.REPLACEMENT_BACKOFF_S * 2 ** (failures - 1), 600.0))


@dataclass
class ConvergeResult:
    created: int = 0
    drained: int = 0
    powered_on: int = 0
    waiting_backoff: bool = False
    notes: list[str] = field(default_factory=list)


def model_code_converge(*, model_code_id: int) -> ConvergeResult:
    """Bring one model code's live instances to ``desired_replicas`` (create or drain), under a
    row lock on the model code so that concurrent callers never create duplicates."""
    result = ConvergeResult()
    now = timezone.now()
    with transaction.atomic():
        model = LlmModel.objects.select_for_update().filter(id=model_code_id).first()
        if model is None:
            return result
        if model.status == ModelStatus.DECOMMISSIONING:
            for instance in model.instances.filter(status__in=HOLDS_MACHINE):
                if instance.status != S.TERMINATING:
                    instance_request_termination(instance=instance, reason="model decommissioned")
            return result
        if model.status not in DEPLOYED_STATUSES:
            return result
        live = list(model.instances.filter(status__in=LIVE).order_by("created_at"))
        missing = model.desired_replicas - len(live)
        missing -= _wake_powered_off(model, missing, result)
        if missing > 0:
            backoff = _replacement_backoff_s(model, now)
            last = (
                model.instances.order_by("-created_at")
                .values_list("status_changed_at", flat=True)
                .first()
            )
            if backoff and last and (now - last).total_seconds() < backoff:
                result.waiting_backoff = True
                result.notes.append(f"replacement backoff {backoff:.0f}s")
                return result
            provider = provider_for_model(model)
            for _ in range(missing):
                instance_create(llm_model=model, provider=provider)
                result.created += 1
        elif missing < 0:
            # Surplus: the least useful first (not yet serving, then the newest ready).
            order = {S.UNAVAILABLE: 0, S.PROVISIONING: 1, S.BOOTING: 2, S.STARTING: 3, S.READY: 4}
            surplus = sorted(live, key=lambda i: (order[S(i.status)], -i.created_at.timestamp()))
            for instance in surplus[:-missing]:
                instance_drain(instance=instance, reason=f"scaled to {model.desired_replicas}")
                result.drained += 1
    _model_code_settle(model_code_id=model_code_id)
    return result


def _wake_powered_off(model: LlmModel, missing: int, result: ConvergeResult) -> int:
    """Machines kept at zero (``powered_off``) are powered on before any is created: no new
    machine, no model download. Kept machines of a model code that no longer scales to zero
    by power-off are terminated. Returns how many were woken (the caller holds the model
    code's row lock)."""
    kept = list(model.instances.filter(status=S.POWERED_OFF).order_by("-status_changed_at"))
    if model.scale_to_zero_mode != ScaleToZeroMode.POWER_OFF:
        for instance in kept:
            instance_request_termination(
                instance=instance, reason="the model code no longer scales to zero by power-off"
            )
        return 0
    woken = 0
    for instance in kept[: max(missing, 0)]:
        if instance_power_on_to_wake(
            instance=instance, reason=f"woken: powering on (scaled to {model.desired_replicas})"
        ):
            woken += 1
    result.powered_on += woken
    return woken


def _model_code_settle(*, model_code_id: int) -> None:
    """deploying → active once a replica is ready (or none is wanted)."""
    model = LlmModel.objects.filter(id=model_code_id).first()
    if model is None or model.status != ModelStatus.DEPLOYING:
        return
    if model.desired_replicas == 0 or model.instances.filter(status=S.READY).exists():
        reason = "scaled to zero" if model.desired_replicas == 0 else "a replica is ready"
        model_transition(
            model=model, to=ModelStatus.ACTIVE, reason=reason, expected=ModelStatus.DEPLOYING
        )


def model_code_finish_decommission(*, model_code_id: int) -> bool:
    """decommissioning → decommissioned once no instance holds a machine; archives history."""
    with transaction.atomic():
        model = LlmModel.objects.select_for_update().filter(id=model_code_id).first()
        if model is None or model.status != ModelStatus.DECOMMISSIONING:
            return False
        if model.instances.filter(status__in=HOLDS_MACHINE).exists():
            return False
        model.instances.update(archived=True)
        return model_transition(
            model=model,
            to=ModelStatus.DECOMMISSIONED,
            reason="every instance terminated",
            expected=ModelStatus.DECOMMISSIONING,
        )

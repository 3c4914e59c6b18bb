"""The scaling policy (docs/autoscaling.md): its fields and their validation, the
organization's quota, and the autoscaler's write (``model_autoscale``, a compare-and-set on the
desired replicas with its ``ScalingDecision``)."""

from __future__ import annotations

import re
from typing import Any
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from django.db import transaction
from django.utils import timezone

from apps.accounts.models import Organization
from apps.accounts.services import audit_record
from apps.instances import hosting
from apps.models.choices import DEPLOYED_STATUSES, ModelStatus, ScaleToZeroMode
from apps.models.models import LlmModel, ScalingDecision, ScalingQuota
from apps.models.services.model_codes import MAX_REPLICAS, _wake
from inventiv.errors import ApplicationError, Conflict
from inventiv.events import (
    INSTANCE_GROUP,
    SCALING_DECISION,
    SCALING_POLICY,
    STAFF_GROUP,
    ScalingDecisionEvent,
    ScalingPolicyEvent,
    org_group,
    publish_on_commit,
)

# The scaling policy's fields (docs/autoscaling.md) and their bounds.
POLICY_FIELDS = (
    "min_replicas",
    "max_replicas",
    "target_load_per_replica",
    "target_kv_cache_usage",
    "scale_up_cooldown_s",
    "scale_down_cooldown_s",
    "idle_to_zero_s",
    "scale_schedules",
    "scale_timezone",
    "hold_timeout_s",
    "ttft_p95_bound_ms",
    "latency_window_s",
    "drain_timeout_s",
    "scale_to_zero_mode",
)
_HHMM = re.compile(r"^([01][0-9]|2[0-3]):[0-5][0-9]$")


def _policy_error(param: str, message: str) -> ApplicationError:
    return ApplicationError(f"{param}: {message}", param=param)


def _check_range(
    values: dict[str, Any], name: str, low: int, high: int, *, nullable: bool = False
) -> None:
    value = values[name]
    if value is None and nullable:
        return
    if type(value) is not int or not low <= value <= high:
        extra = ", or null" if nullable else ""
        raise _policy_error(name, f"an integer {low} .. {high}{extra}.")


def _validate_schedules(schedules: Any, max_replicas: int) -> list[dict[str, Any]]:
    if not isinstance(schedules, list) or len(schedules) > 32:
        raise _policy_error("scale_schedules", "a list of at most 32 schedules.")
    clean: list[dict[str, Any]] = []
    for n, item in enumerate(schedules):
        param = f"scale_schedules[{n}]"
        if not isinstance(item, dict) or set(item) != {"days", "start", "end", "min_replicas"}:
            raise _policy_error(param, "needs exactly days, start, end and min_replicas.")
        days = item["days"]
        if (
            not isinstance(days, list)
            or not days
            or any(type(d) is not int or not 0 <= d <= 6 for d in days)
        ):
            raise _policy_error(f"{param}.days", "a non-empty list of 0 (Monday) .. 6 (Sunday).")
        for edge in ("start", "end"):
            if not isinstance(item[edge], str) or not _HHMM.match(item[edge]):
                raise _policy_error(f"{param}.{edge}", "a time HH:MM (00:00 .. 23:59).")
        if item["start"] >= item["end"]:
            raise _policy_error(f"{param}.end", "must be after start (same day).")
        floor = item["min_replicas"]
        if type(floor) is not int or not 0 <= floor <= max_replicas:
            raise _policy_error(f"{param}.min_replicas", f"an integer 0 .. {max_replicas}.")
        clean.append(
            {
                "days": sorted(set(days)),
                "start": item["start"],
                "end": item["end"],
                "min_replicas": floor,
            }
        )
    return clean


def model_set_scaling_policy(*, model: LlmModel, **changes: Any) -> LlmModel:
    """Change the scaling policy (only the given fields), validated as a whole: min <= max <=
    MAX_REPLICAS, scheduled minimums within max, a known time zone. The desired replica count
    is clamped into the new bounds at once and the orchestrator woken."""
    unknown = set(changes) - set(POLICY_FIELDS)
    if unknown:
        raise _policy_error(sorted(unknown)[0], "not a scaling policy field.")
    if model.status in (ModelStatus.DECOMMISSIONING, ModelStatus.DECOMMISSIONED):
        raise Conflict(f"A {model.status} model code cannot be changed.")
    values = {name: getattr(model, name) for name in POLICY_FIELDS}
    values.update(changes)
    if not 0 <= values["min_replicas"] <= values["max_replicas"] <= MAX_REPLICAS:
        raise _policy_error(
            "min_replicas", f"need 0 <= min_replicas <= max_replicas <= {MAX_REPLICAS}."
        )
    kv = values["target_kv_cache_usage"]
    if kv is not None and not 0 < kv <= 1:
        raise _policy_error("target_kv_cache_usage", "a fraction in (0, 1].")
    _check_range(values, "ttft_p95_bound_ms", 1, 600_000, nullable=True)
    _check_range(values, "latency_window_s", 10, 3_600)
    _check_range(values, "drain_timeout_s", 10, 86_400, nullable=True)
    if values["scale_to_zero_mode"] not in ScaleToZeroMode.values:
        raise _policy_error("scale_to_zero_mode", "terminate or power_off.")
    if (
        values["scale_to_zero_mode"] == ScaleToZeroMode.POWER_OFF
        and model.provider is not None
        and not hosting.provider_can_power_off(model.provider)
    ):
        raise _policy_error(
            "scale_to_zero_mode",
            f"the provider {model.provider.name} ({model.provider.kind}) cannot power machines"
            " off; use terminate.",
        )
    try:
        ZoneInfo(values["scale_timezone"])
    except (ZoneInfoNotFoundError, ValueError, TypeError):
        raise _policy_error("scale_timezone", "not a known IANA time zone.") from None
    values["scale_schedules"] = _validate_schedules(
        values["scale_schedules"], values["max_replicas"]
    )
    fields = [name for name in POLICY_FIELDS if name in changes]
    with transaction.atomic():
        locked = LlmModel.objects.select_for_update().get(id=model.id)
        for name in fields:
            setattr(locked, name, values[name])
        clamped = min(max(locked.desired_replicas, locked.min_replicas), locked.max_replicas)
        if locked.status in DEPLOYED_STATUSES and clamped != locked.desired_replicas:
            locked.desired_replicas = clamped
            fields.append("desired_replicas")
        locked.save(update_fields=[*fields, "updated_at"])
        audit_record(
            action="model_code.scaling_policy",
            organization_id=locked.organization_id,
            target=locked,
            data={name: changes[name] for name in changes if name != "scale_schedules"},
        )
        # The gateways' routing snapshot carries holds_at_zero and hold_timeout_s.
        publish_on_commit(
            [org_group(locked.organization_id), INSTANCE_GROUP, STAFF_GROUP],
            SCALING_POLICY,
            ScalingPolicyEvent(
                model_code_id=locked.id,
                organization_id=locked.organization_id,
                model_code=locked.name,
                at=timezone.now().isoformat(),
            ),
        )
        if locked.status in DEPLOYED_STATUSES:
            _wake(locked.id)
    model.refresh_from_db()
    return model


def scaling_quota_set(
    *, organization: Organization, max_gpus: int | None, max_instances: int | None
) -> ScalingQuota:
    """Set (or clear, with None) an organization's ceiling on GPUs and instances (audited as
    ``scaling_quota.set``). Who may is the caller's business: operators only (the REST view)."""
    for name, value in (("max_gpus", max_gpus), ("max_instances", max_instances)):
        if value is not None and not 0 <= value <= 100_000:
            raise _policy_error(name, "an integer 0 .. 100000, or null for no ceiling.")
    with transaction.atomic():
        quota, _ = ScalingQuota.objects.update_or_create(
            organization=organization,
            defaults={"max_gpus": max_gpus, "max_instances": max_instances},
        )
        audit_record(
            action="scaling_quota.set",
            organization_id=organization.id,
            target=quota,
            data={"max_gpus": max_gpus, "max_instances": max_instances},
        )
    return quota


def scaling_quota_usage(*, organization: Organization) -> dict[str, int]:
    """What counts against the quota now: the desired replicas of the organization's deployed
    model codes, and their GPUs (replicas x GPUs per replica)."""
    used_instances = used_gpus = 0
    for replicas, gpus in LlmModel.objects.filter(
        organization=organization, status__in=DEPLOYED_STATUSES
    ).values_list("desired_replicas", "gpu_count"):
        used_instances += replicas
        used_gpus += replicas * gpus
    return {"used_instances": used_instances, "used_gpus": used_gpus}


def model_autoscale(
    *,
    model_code_id: int,
    expected: int,
    replicas: int,
    reason: str,
    trigger: str,
    inputs: dict[str, Any],
) -> ScalingDecision | None:
    """The autoscaler's write: ``desired_replicas`` from ``expected`` to ``replicas`` by
    compare-and-set (a manual scale or another pass in between wins: None), on a deployed
    model code only, with the decision row and ``EVENT:SCALING_DECISION`` after commit."""
    with transaction.atomic():
        updated = LlmModel.objects.filter(
            id=model_code_id, desired_replicas=expected, status__in=DEPLOYED_STATUSES
        ).update(desired_replicas=replicas, updated_at=timezone.now())
        if not updated:
            return None
        model = LlmModel.objects.get(id=model_code_id)
        decision = ScalingDecision.objects.create(
            model_code=model,
            trigger=trigger,
            replicas_before=expected,
            replicas_after=replicas,
            reason=reason[:500],
            inputs=inputs,
        )
        publish_on_commit(
            [org_group(model.organization_id), STAFF_GROUP],
            SCALING_DECISION,
            ScalingDecisionEvent(
                decision_id=decision.id,
                model_code_id=model.id,
                organization_id=model.organization_id,
                model_code=model.name,
                replicas_before=expected,
                replicas_after=replicas,
                reason=decision.reason,
                trigger=trigger,
                at=decision.created_at.isoformat(),
            ),
        )
    return decision

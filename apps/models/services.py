"""Writes for model codes. Each command records intent, then wakes the orchestrator after
commit (through ``apps.instances.hosting``, the only part of the instances app this app uses);
the periodic reconcile converges anyway if that is lost.

Every status change is one compare-and-set in ``model_transition`` that appends a
``ModelCodeEvent`` (who, from, to, why) and publishes ``EVENT:MODEL_<STATUS>`` after commit.
"""

from __future__ import annotations

import re
from decimal import Decimal
from typing import Any
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from django.db import IntegrityError, transaction
from django.utils import timezone

from agent.engine_args import validate_engine_args, validate_model_id, validate_precision
from apps.accounts.models import Organization
from apps.accounts.services import audit_record
from apps.instances import hosting
from apps.models.choices import (
    DEPLOYED_STATUSES,
    Engine,
    ModelStatus,
    ScaleToZeroMode,
    model_can_transition,
)
from apps.models.models import (
    HubToken,
    LlmModel,
    ModelCodeEvent,
    ScalingDecision,
    ScalingQuota,
)
from inventiv import crypto
from inventiv.errors import ApplicationError, Conflict
from inventiv.events import (
    INSTANCE_GROUP,
    MODEL_EVENT_PREFIX,
    SCALING_DECISION,
    SCALING_POLICY,
    STAFF_GROUP,
    ModelStatusEvent,
    ScalingDecisionEvent,
    ScalingPolicyEvent,
    org_group,
    publish_on_commit,
)

ORCHESTRATOR = "orchestrator"

MAX_REPLICAS = 64
EDITABLE = (
    "engine",
    "model_id",
    "engine_args",
    "gpu_count",
    "vram_per_gpu_gb",
    "parameter_count_b",
    "dtype",
    "quantization",
    "max_model_len",
    "routing_policy",
    "provider",
    "instance_type",
    "zone",
)


def model_transition(
    *,
    model: LlmModel,
    to: ModelStatus,
    reason: str,
    by: str = ORCHESTRATOR,
    expected: ModelStatus | None = None,
    fields: dict[str, Any] | None = None,
) -> bool:
    """Move ``model`` to ``to`` if the transition table allows it from its current status.

    ``expected`` pins the status the caller decided on (default: the status read now);
    ``fields`` are written in the same UPDATE. Returns False when the transition is not allowed
    or another writer changed the status first. On success ``model`` is updated in memory.
    """
    current = expected or ModelStatus(
        LlmModel.objects.values_list("status", flat=True).get(id=model.id)
    )
    if not model_can_transition(current, to):
        return False
    now = timezone.now()
    values: dict[str, Any] = {"status": to, "status_changed_at": now, **(fields or {})}
    with transaction.atomic():
        if not LlmModel.objects.filter(id=model.id, status=current).update(**values):
            return False
        ModelCodeEvent.objects.create(
            model_code_id=model.id,
            from_status=current,
            to_status=to,
            reason=reason[:500],
            actor=by[:254],
        )
        for name, value in values.items():
            setattr(model, name, value)
        publish_on_commit(
            [org_group(model.organization_id), INSTANCE_GROUP, STAFF_GROUP],
            f"{MODEL_EVENT_PREFIX}{to.upper()}",
            ModelStatusEvent(
                model_code_id=model.id,
                organization_id=model.organization_id,
                model_code=model.name,
                status=to,
                from_status=current,
                reason=reason,
                by=by,
                at=now.isoformat(),
            ),
        )
    return True


def _wake(model_id: int) -> None:
    hosting.model_code_converge_soon(model_code_id=model_id)


def _validate(values: dict[str, Any]) -> dict[str, Any]:
    engine = values["engine"]
    try:
        if "model_id" in values:
            values["model_id"] = validate_model_id(values["model_id"])
        values["engine_args"] = validate_engine_args(engine, values.get("engine_args") or {})
        if "dtype" in values or "quantization" in values:
            validate_precision(
                engine,
                dtype=values.get("dtype", "auto"),
                quantization=values.get("quantization", ""),
            )
    except ValueError as exc:
        field, _, _ = str(exc).partition(":")
        raise ApplicationError(str(exc), param=field or "engine_args") from None
    if engine in (Engine.VLLM, Engine.TGI):
        if values.get("gpu_count", 1) < 1:
            raise ApplicationError(
                f"gpu_count: the {engine} engine needs at least one GPU.", param="gpu_count"
            )
        if not values.get("vram_per_gpu_gb") and not values.get("parameter_count_b"):
            raise ApplicationError(
                "vram_per_gpu_gb: give the VRAM per GPU, or parameter_count_b to estimate it.",
                param="vram_per_gpu_gb",
            )
    tp = values["engine_args"].get("tensor_parallel_size")
    if tp is not None and tp > max(values.get("gpu_count", 1), 1):
        raise ApplicationError(
            "engine_args.tensor_parallel_size: cannot exceed gpu_count.",
            param="engine_args.tensor_parallel_size",
        )
    instance_type = values.get("instance_type")
    provider = values.get("provider")
    if provider is not None:
        hosting.provider_check_usable(provider)
    if (
        instance_type is not None
        and provider is not None
        and instance_type.provider_id != provider.id
    ):
        raise ApplicationError("instance_type: belongs to another provider.", param="instance_type")
    if values.get("parameter_count_b") is not None and values["parameter_count_b"] <= Decimal(0):
        raise ApplicationError("parameter_count_b: must be positive.", param="parameter_count_b")
    return values


def model_create(*, organization: Organization, name: str, **values: Any) -> LlmModel:
    """Create a model code in ``draft``. Raises ApplicationError naming the bad field."""
    values.setdefault("engine", Engine.VLLM)
    values = _validate(values)
    try:
        with transaction.atomic():
            return LlmModel.objects.create(organization=organization, name=name, **values)
    except IntegrityError:
        raise Conflict(f"A model code named {name!r} already exists.", param="name") from None


# What running instances were built from: changing it on a deployed model code would restart
# (or break) every replica at once, so it is refused until rolling updates exist.
ENGINE_FIELDS = frozenset(EDITABLE) - {"routing_policy"}


def model_update(*, model: LlmModel, **changes: Any) -> LlmModel:
    if model.status in (ModelStatus.DECOMMISSIONING, ModelStatus.DECOMMISSIONED):
        raise Conflict(f"A {model.status} model code cannot be changed.")
    frozen = sorted(
        name for name in ENGINE_FIELDS & set(changes) if changes[name] != getattr(model, name)
    )
    if frozen and model.status in DEPLOYED_STATUSES:
        raise Conflict(
            f"{frozen[0]}: cannot change on a deployed model code (every replica would "
            "restart at once); scale it to 0 or create a new model code.",
            param=frozen[0],
            code="deployed",
        )
    values = {name: getattr(model, name) for name in EDITABLE}
    values.update(changes)
    values = _validate(values)
    fields = [name for name in EDITABLE if name in changes]
    for name in fields:
        setattr(model, name, values[name])
    model.save(update_fields=[*fields, "updated_at"])
    return model


def model_delete(*, model: LlmModel) -> None:
    if model.status not in (ModelStatus.DRAFT, ModelStatus.DECOMMISSIONED):
        raise Conflict("Decommission the model code before deleting it.", code="still_deployed")
    if model.instances.exists():
        raise Conflict(
            "This model code has instance history; it stays decommissioned.", code="has_history"
        )
    model.delete()


def _locked(model: LlmModel, allowed: frozenset[ModelStatus] | set[ModelStatus]) -> LlmModel:
    """The model code, row-locked for this transaction, if its status is still in
    ``allowed``; 409 otherwise (a concurrent command changed it)."""
    locked = LlmModel.objects.select_for_update().get(id=model.id)
    if locked.status not in allowed:
        raise Conflict(f"The model code is {locked.status}; this command no longer applies.")
    return locked


def model_deploy(*, model: LlmModel, replicas: int | None = None, by: str = "") -> LlmModel:
    """draft → deploying with ``replicas`` wanted (default: the current desired count, at
    least 1). Idempotent for a model code already deployed (only the replica count changes)."""
    if model.status in (ModelStatus.DECOMMISSIONING, ModelStatus.DECOMMISSIONED):
        raise Conflict(f"A {model.status} model code cannot be deployed.")
    if replicas is not None:
        wanted = replicas
        policy: dict[str, int] = {"min_replicas": wanted, "max_replicas": wanted}
    else:  # the policy decides: the current count, at least 1, within [min, max]
        wanted = min(max(model.desired_replicas, model.min_replicas, 1), model.max_replicas)
        policy = {}
    _check_replicas(wanted)
    hosting.provider_for_model(model)  # fail now, with a clear error, if nothing can host it
    with transaction.atomic():
        locked = _locked(model, {ModelStatus.DRAFT, *DEPLOYED_STATUSES})
        if locked.status in DEPLOYED_STATUSES:
            LlmModel.objects.filter(id=model.id).update(desired_replicas=wanted, **policy)
        else:
            model_transition(
                model=locked,
                to=ModelStatus.DEPLOYING,
                reason=f"deployed with {wanted} replica(s)",
                by=by or ORCHESTRATOR,
                expected=ModelStatus(locked.status),
                fields={"desired_replicas": wanted, **policy},
            )
        audit_record(
            action="model_code.deploy",
            organization_id=model.organization_id,
            target=model,
            data={"replicas": wanted},
        )
        model.refresh_from_db()
        _wake(model.id)
    return model


def _check_replicas(replicas: int) -> None:
    if not 0 <= replicas <= MAX_REPLICAS:
        raise ApplicationError(f"replicas: must be between 0 and {MAX_REPLICAS}.", param="replicas")


def model_set_replicas(*, model: LlmModel, replicas: int) -> LlmModel:
    """A manual replica count: the scaling policy becomes min = max = ``replicas``."""
    if model.status not in DEPLOYED_STATUSES:
        raise Conflict("Deploy the model code before scaling it.", code="not_deployed")
    _check_replicas(replicas)
    with transaction.atomic():
        _locked(model, set(DEPLOYED_STATUSES))
        LlmModel.objects.filter(id=model.id).update(
            desired_replicas=replicas, min_replicas=replicas, max_replicas=replicas
        )
        audit_record(
            action="model_code.replicas",
            organization_id=model.organization_id,
            target=model,
            data={"from": model.desired_replicas, "to": replicas},
        )
        model.refresh_from_db()
        _wake(model.id)
    return model


def model_decommission(*, model: LlmModel, by: str = "") -> LlmModel:
    """Terminate every instance of the model code and archive its history. Idempotent."""
    if model.status == ModelStatus.DECOMMISSIONED:
        return model
    with transaction.atomic():
        locked = _locked(model, set(ModelStatus))
        if locked.status not in (ModelStatus.DECOMMISSIONING, ModelStatus.DECOMMISSIONED):
            model_transition(
                model=locked,
                to=ModelStatus.DECOMMISSIONING,
                reason="decommission requested",
                by=by or ORCHESTRATOR,
                expected=ModelStatus(locked.status),
                fields={"desired_replicas": 0},
            )
            audit_record(
                action="model_code.decommission",
                organization_id=model.organization_id,
                target=model,
            )
            _wake(model.id)
        model.refresh_from_db()
    return model


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


# Hugging Face user access tokens are "hf_" and letters/digits; accept any printable token of
# a sane length (organizations may use fine-grained or older tokens) but no whitespace or
# control character, which an environment variable could not carry safely.
_HUB_TOKEN_MAX = 256


def hub_token_validate(token: object) -> str:
    """``token`` if it can be a Hugging Face token; ApplicationError (param ``token``) if not."""
    if (
        not isinstance(token, str)
        or not token
        or len(token) > _HUB_TOKEN_MAX
        or not token.isprintable()
        or any(ch.isspace() for ch in token)
    ):
        raise ApplicationError(
            f"token: must be a Hugging Face access token (1-{_HUB_TOKEN_MAX} printable "
            "characters, no whitespace).",
            param="token",
        )
    return token


def hub_token_set(*, organization: Organization, token: object, by: str = "") -> HubToken:
    """Store ``organization``'s Hugging Face token, encrypted (replacing any previous one).
    Raises ApplicationError (param ``token``) for an empty, over-long or non-printable token.
    Engines pick it up at their next (re)start; the token is never returned."""
    token = hub_token_validate(token)
    hub_token, _ = HubToken.objects.update_or_create(
        organization=organization,
        defaults={
            "token_encrypted": crypto.encrypt(token),
            "hint": token[-4:] if len(token) >= 12 else "",
            "updated_by": by[:254],
        },
    )
    return hub_token


def hub_token_delete(*, organization: Organization) -> bool:
    """Forget ``organization``'s token; False when it had none."""
    deleted, _ = HubToken.objects.filter(organization=organization).delete()
    return bool(deleted)

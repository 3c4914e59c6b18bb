"""Model codes' lifecycle: create, change, delete, deploy, scale by hand, decommission. Each
command records intent, then wakes the orchestrator after commit (through
``apps.instances.hosting``, the only part of the instances app this app uses); the periodic
reconcile converges anyway if that is lost.

Every status change is one compare-and-set in ``model_transition`` that appends a
``ModelCodeEvent`` (who, from, to, why) and publishes ``EVENT:MODEL_<STATUS>`` after commit.
"""

from __future__ import annotations

from decimal import Decimal
from typing import Any

from django.db import IntegrityError, transaction
from django.utils import timezone

from agent.engine_args import validate_engine_args, validate_model_id, validate_precision
from apps.accounts.models import Organization
from apps.accounts.services import audit_record
from apps.instances import hosting
from apps.models.choices import DEPLOYED_STATUSES, Engine, ModelStatus, model_can_transition
from apps.models.models import LlmModel, ModelCodeEvent
from inventiv.errors import ApplicationError, Conflict
from inventiv.events import (
    INSTANCE_GROUP,
    MODEL_EVENT_PREFIX,
    STAFF_GROUP,
    ModelStatusEvent,
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

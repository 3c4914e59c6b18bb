"""The orchestrator: provisioning and termination steps (run by per-instance tasks) and the
reconciler that converges desired state (the database) with reality (providers, heartbeats).

Guarantees:
* Every step is safe to run twice: it checks the state first, records external ids as soon as
  it has them, and creates machines through adapters that look for our tag before creating.
* Replica counting and creation for a model code happen under a row lock on the model code, so
  two reconcilers (or a command delivered twice) never create a duplicate instance.
* The reconciler takes a non-blocking lease; a second one skips instead of waiting.
"""

from __future__ import annotations

import contextlib
import functools
import logging
import os
import socket
from dataclasses import dataclass, field
from datetime import timedelta
from typing import Any

from django.conf import settings
from django.db import transaction
from django.db.models import Count, Q
from django.utils import timezone

from apps.instances.choices import FAILED, HOLDS_MACHINE, LIVE, InstanceStatus, ProviderKind
from apps.instances.matching import Offer, offers_for_instance
from apps.instances.models import Instance, OrchestratorLock, ProvisionAttempt
from apps.instances.providers import get_adapter
from apps.instances.providers.base import MachineNotFound, MachineSpec, ProviderError
from apps.instances.services import (
    instance_create,
    instance_fail,
    instance_request_termination,
    instance_transition,
    provider_for_model,
)
from apps.models.choices import DEPLOYED_STATUSES, ModelStatus
from apps.models.models import LlmModel
from inventiv import crypto

logger = logging.getLogger(__name__)
S = InstanceStatus

MAX_PROVISION_COMMANDS = 5
RECONCILE_LOCK = "reconcile"


# --- provisioning -----------------------------------------------------------------------------


def _record_attempt(instance: Instance, offer: Offer, *, error: ProviderError | None) -> None:
    ProvisionAttempt.objects.create(
        instance=instance,
        provider_id=offer.provider_id,
        instance_type_id=offer.instance_type_id,
        instance_type_code=offer.instance_type_code,
        zone=offer.zone,
        outcome=ProvisionAttempt.Outcome.FAILED if error else ProvisionAttempt.Outcome.SUCCEEDED,
        error_code=error.code if error else "",
        message=str(error)[:1000] if error else "",
    )


def _spec(instance: Instance, offer: Offer) -> MachineSpec:
    token = crypto.decrypt(instance.bootstrap_token_encrypted)
    from apps.instances import bootstrap

    user_data = (
        bootstrap.render_user_data(instance=instance, bootstrap_token=token)
        if (offer.provider_kind not in (ProviderKind.LOCAL, ProviderKind.ONPREM))
        else ""
    )
    return MachineSpec(
        instance_id=str(instance.id),
        instance_type=offer.instance_type_code,
        zone=offer.zone,
        control_plane_url=settings.AGENT_API_URL,
        bootstrap_token=token,
        engine_port=instance.engine_port,
        boot_volume_gb=bootstrap.boot_volume_gb(instance.llm_model),
        user_data=user_data,
        tags={"inventiv-instance": str(instance.id)},
    )


class TransientProvisioningError(Exception):
    """Raised to the task so that Celery retries it later."""


def provision_instance(instance_id: str) -> str:
    """``CMD:PROVISION_INSTANCE``. Tries each offer in order until one gives a machine;
    records every attempt with why it failed; fails the instance with the reasons when none
    does. Returns what it did (for logs and tests)."""
    instance = (
        Instance.objects.select_related("provider", "llm_model").filter(id=instance_id).first()
    )
    if instance is None or instance.status != S.PROVISIONING:
        return "skipped: not provisioning"
    if not instance.bootstrap_token_encrypted:
        # The agent already registered (the create response was slow or lost).
        return "skipped: agent already registered"
    offers = offers_for_instance(instance)
    failed_before = {
        (a.provider_id, a.instance_type_code, a.zone)
        for a in instance.attempts.filter(outcome=ProvisionAttempt.Outcome.FAILED).exclude(
            error_code="transient"
        )
    }
    reasons: list[str] = []
    for offer in offers:
        if (offer.provider_id, offer.instance_type_code, offer.zone) in failed_before:
            reasons.append(f"{offer.instance_type_code}@{offer.zone}: failed before")
            continue
        adapter = get_adapter(
            instance.provider
            if offer.provider_id == instance.provider_id
            else _provider(offer.provider_id)
        )
        try:
            machine = adapter.create_machine(_spec(instance, offer))
        except ProviderError as exc:
            _record_attempt(instance, offer, error=exc)
            if exc.transient:
                raise TransientProvisioningError(str(exc)) from exc
            reasons.append(f"{offer.instance_type_code}@{offer.zone}: {exc.code}: {exc}")
            continue
        _record_attempt(instance, offer, error=None)
        fields: dict[str, Any] = {
            "provider_id": offer.provider_id,
            "provider_resource_id": machine.provider_id,
            "zone": machine.zone or offer.zone,
            "instance_type_id": offer.instance_type_id,
            "hourly_price": offer.hourly_price,
            "public_ip": machine.public_ip or "",
        }
        host = adapter.engine_host(machine)
        if host and not instance.engine_host:
            fields["engine_host"] = host
        # Record the machine first, whatever the status became meanwhile (the agent may have
        # registered already): it must never be forgotten.
        Instance.objects.filter(id=instance.id).update(**fields)
        instance_transition(
            instance=instance,
            to=S.BOOTING,
            expected=S.PROVISIONING,
            reason=f"machine {machine.provider_id} created ({offer.instance_type_code}"
            f"@{machine.zone or offer.zone})",
        )
        return f"created {machine.provider_id}"
    message = "; ".join(reasons) if reasons else "no compatible offer"
    instance_fail(
        instance=instance,
        to=S.PROVISIONING_FAILED,
        reason=f"no offer could be provisioned: {message}",
    )
    return "failed: " + message


def _provider(provider_id: int) -> Any:
    from apps.instances.models import Provider

    return Provider.objects.get(id=provider_id)


def terminate_instance(instance_id: str) -> str:
    """``CMD:TERMINATE_INSTANCE``. Releases the machine and everything attached, then marks
    the instance terminated. Idempotent: a machine already gone is success."""
    instance = (
        Instance.objects.select_related("provider", "llm_model").filter(id=instance_id).first()
    )
    if instance is None or instance.status != S.TERMINATING:
        return "skipped: not terminating"
    adapter = get_adapter(instance.provider)
    machine = adapter.find_machine(str(instance.id))
    if machine is not None:
        with contextlib.suppress(MachineNotFound):
            adapter.terminate_machine(machine)
    instance_transition(
        instance=instance,
        to=S.TERMINATED,
        expected=S.TERMINATING,
        reason="machine released" if machine else "no machine left at the provider",
    )
    _after_instance_terminated(instance)
    return "terminated"


def _after_instance_terminated(instance: Instance) -> None:
    model = instance.llm_model
    if model.status == ModelStatus.DECOMMISSIONING:
        model_finish_decommission(model.id)


# --- model codes --------------------------------------------------------------------------------


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
    waiting_backoff: bool = False
    notes: list[str] = field(default_factory=list)


def converge_model(model_id: int) -> ConvergeResult:
    """Bring one model code's live instances to ``desired_replicas`` (create or drain), under a
    row lock on the model code so that concurrent callers never create duplicates."""
    result = ConvergeResult()
    now = timezone.now()
    with transaction.atomic():
        model = LlmModel.objects.select_for_update().filter(id=model_id).first()
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
                from apps.instances.services import instance_drain

                instance_drain(instance=instance, reason=f"scaled to {model.desired_replicas}")
                result.drained += 1
    _update_model_status(model_id)
    return result


def _update_model_status(model_id: int) -> None:
    model = LlmModel.objects.filter(id=model_id).first()
    if model is None:
        return
    if model.status == ModelStatus.DEPLOYING:
        ready = model.instances.filter(status=S.READY).exists()
        if ready or model.desired_replicas == 0:
            LlmModel.objects.filter(id=model_id, status=ModelStatus.DEPLOYING).update(
                status=ModelStatus.ACTIVE, status_changed_at=timezone.now()
            )


def model_finish_decommission(model_id: int) -> bool:
    """decommissioning → decommissioned once no instance holds a machine; archives history."""
    with transaction.atomic():
        model = LlmModel.objects.select_for_update().filter(id=model_id).first()
        if model is None or model.status != ModelStatus.DECOMMISSIONING:
            return False
        if model.instances.filter(status__in=HOLDS_MACHINE).exists():
            return False
        model.instances.update(archived=True)
        LlmModel.objects.filter(id=model_id).update(
            status=ModelStatus.DECOMMISSIONED, status_changed_at=timezone.now()
        )
    return True


# --- reconcile --------------------------------------------------------------------------------


def _take_lease(name: str, seconds: float) -> str | None:
    holder = f"{socket.gethostname()}:{os.getpid()}:{crypto.new_token(nbytes=4)}"
    now = timezone.now()
    OrchestratorLock.objects.get_or_create(name=name)
    taken = OrchestratorLock.objects.filter(
        Q(expires_at__isnull=True) | Q(expires_at__lt=now), name=name
    ).update(holder=holder, expires_at=now + timedelta(seconds=seconds))
    return holder if taken else None


def _release_lease(name: str, holder: str, summary: dict[str, Any]) -> None:
    OrchestratorLock.objects.filter(name=name, holder=holder).update(
        expires_at=None, last_run_at=timezone.now(), last_summary=summary
    )


def reconcile() -> dict[str, Any]:
    """One pass of the reconciler. Returns a summary (also stored for the status endpoint)."""
    holder = _take_lease(RECONCILE_LOCK, seconds=max(30.0, settings.RECONCILE_INTERVAL_S * 4))
    if holder is None:
        return {"skipped": "another reconciler holds the lease"}
    summary: dict[str, Any] = {}
    try:
        summary.update(_enforce_deadlines())
        summary.update(_check_heartbeats())
        summary.update(_resend_lost_commands())
        created = drained = 0
        for model_id in LlmModel.objects.filter(
            status__in=[*DEPLOYED_STATUSES, ModelStatus.DECOMMISSIONING]
        ).values_list("id", flat=True):
            try:
                result = converge_model(model_id)
            except Exception:  # one broken model code must not stop the others
                logger.exception("converging model code %s failed", model_id)
                continue
            created += result.created
            drained += result.drained
            model_finish_decommission(model_id)
        summary.update(created=created, drained=drained)
    finally:
        _release_lease(RECONCILE_LOCK, holder, summary)
    return summary


def _enforce_deadlines() -> dict[str, int]:
    now = timezone.now()
    failed = 0
    rules = [
        (
            S.BOOTING,
            settings.BOOT_DEADLINE_S,
            S.STARTUP_FAILED,
            "the agent did not register within {s:.0f}s",
        ),
        (
            S.STARTING,
            settings.STARTUP_DEADLINE_S,
            S.STARTUP_FAILED,
            "the engine was not ready within {s:.0f}s",
        ),
    ]
    for status, seconds, to, text in rules:
        cutoff = now - timedelta(seconds=seconds)
        for instance in Instance.objects.select_related("llm_model").filter(
            status=status, status_changed_at__lt=cutoff
        ):
            if instance_fail(instance=instance, to=to, reason=text.format(s=seconds)):
                failed += 1
    drain_cutoff = now - timedelta(seconds=settings.DRAIN_DEADLINE_S)
    for instance in Instance.objects.select_related("llm_model").filter(
        status=S.DRAINING, status_changed_at__lt=drain_cutoff
    ):
        instance_request_termination(
            instance=instance, reason=f"drain deadline ({settings.DRAIN_DEADLINE_S:.0f}s) passed"
        )
    return {"deadline_failures": failed}


def _check_heartbeats() -> dict[str, Any]:
    """ready/starting → unavailable after missed heartbeats; unavailable too long → replaced.
    A mass loss (a large share of a fleet of 3+ at once) points at us, not at the machines:
    then nothing is marked or terminated, and the summary says so."""
    now = timezone.now()
    cutoff = now - timedelta(seconds=settings.HEARTBEAT_DEADLINE_S)
    watched = Instance.objects.select_related("llm_model").filter(
        status__in=[S.STARTING, S.READY, S.UNAVAILABLE]
    )
    fleet = list(watched)
    silent = [i for i in fleet if i.last_heartbeat_at is None or i.last_heartbeat_at < cutoff]
    if len(fleet) >= 3 and len(silent) >= len(fleet) * settings.MASS_HEARTBEAT_LOSS_RATIO:
        logger.warning("mass heartbeat loss: %d of %d instances silent", len(silent), len(fleet))
        return {"mass_heartbeat_loss": f"{len(silent)}/{len(fleet)}"}
    marked = replaced = 0
    replace_cutoff = now - timedelta(seconds=settings.UNAVAILABLE_REPLACE_AFTER_S)
    for instance in silent:
        if instance.status in (S.READY, S.STARTING):
            age = (now - (instance.last_heartbeat_at or instance.status_changed_at)).total_seconds()
            if instance_transition(
                instance=instance,
                to=S.UNAVAILABLE,
                expected=S(instance.status),
                reason=f"no heartbeat for {age:.0f}s",
            ):
                marked += 1
        elif (
            instance.status == S.UNAVAILABLE
            and instance.status_changed_at < replace_cutoff
            and instance_request_termination(
                instance=instance,
                reason=f"unavailable over {settings.UNAVAILABLE_REPLACE_AFTER_S:.0f}s: replaced",
            )
        ):
            replaced += 1
    return {"marked_unavailable": marked, "replaced_unavailable": replaced}


def _resend_lost_commands() -> dict[str, int]:
    """Re-send provision/terminate commands whose after-commit enqueue (or whose worker) was
    lost. Bounded: an instance whose provisioning was re-sent too often fails."""
    from apps.instances.tasks import provision_instance_task, terminate_instance_task

    now = timezone.now()
    cutoff = now - timedelta(seconds=settings.COMMAND_RESEND_AFTER_S)
    resent = 0
    stale = Instance.objects.select_related("llm_model").filter(
        Q(command_sent_at__isnull=True) | Q(command_sent_at__lt=cutoff),
        status__in=[S.PROVISIONING, S.TERMINATING, *FAILED],
    )
    for instance in stale:
        if instance.status in FAILED:
            instance_request_termination(
                instance=instance, reason=f"cleanup after {instance.status}"
            )
            continue
        if (
            instance.status == S.PROVISIONING
            and instance.provision_attempts >= MAX_PROVISION_COMMANDS
        ):
            instance_fail(
                instance=instance,
                to=S.PROVISIONING_FAILED,
                reason=f"provisioning did not complete after {MAX_PROVISION_COMMANDS} commands",
            )
            continue
        updated = Instance.objects.filter(id=instance.id, status=instance.status).update(
            command_sent_at=now,
            provision_attempts=instance.provision_attempts
            + (1 if instance.status == S.PROVISIONING else 0),
        )
        if not updated:
            continue
        task = (
            provision_instance_task
            if instance.status == S.PROVISIONING
            else terminate_instance_task
        )
        instance_id = str(instance.id)
        transaction.on_commit(functools.partial(task.delay, instance_id=instance_id))
        resent += 1
    return {"commands_resent": resent}


def cluster_status() -> dict[str, Any]:
    """The seed's ``GET /admin/status``: instances by state, provider and model code, queue
    depth when measurable, and the last reconcile."""
    by_status = dict(
        Instance.objects.filter(archived=False).values_list("status").annotate(n=Count("id"))
    )
    by_provider: dict[str, dict[str, int]] = {}
    for name, status, n in (
        Instance.objects.filter(status__in=HOLDS_MACHINE)
        .values_list("provider__name", "status")
        .annotate(n=Count("id"))
    ):
        by_provider.setdefault(name, {})[status] = n
    by_model: dict[str, dict[str, int]] = {}
    for org, name, status, n in (
        Instance.objects.filter(status__in=HOLDS_MACHINE)
        .values_list("organization__slug", "llm_model__name", "status")
        .annotate(n=Count("id"))
    ):
        by_model.setdefault(f"{org}/{name}", {})[status] = n
    lock = OrchestratorLock.objects.filter(name=RECONCILE_LOCK).first()
    return {
        "instances_by_status": by_status,
        "instances_by_provider": by_provider,
        "instances_by_model_code": by_model,
        "queue_depth": _queue_depth(),
        "last_reconcile": {
            "at": lock.last_run_at.isoformat() if lock and lock.last_run_at else None,
            "summary": lock.last_summary if lock else {},
        },
    }


def _queue_depth() -> int | None:
    if not settings.REDIS_URL:
        return None
    import redis

    client = redis.Redis.from_url(settings.REDIS_URL, socket_timeout=2)
    try:
        return int(client.llen(settings.REDIS_PREFIX + "celery:celery"))
    except redis.RedisError:
        return None
    finally:
        client.close()


def local_fleet_shutdown(reason: str) -> int:
    """Terminate, synchronously, every instance on a local provider (the embedded platform is
    stopping and its agents are its own child processes). Deployed model codes stay deployed:
    the next start provisions fresh instances at once. Returns how many were terminated."""
    count = 0
    for instance in Instance.objects.select_related("provider", "llm_model").filter(
        provider__kind=ProviderKind.LOCAL, status__in=HOLDS_MACHINE
    ):
        if instance.status != S.TERMINATING:
            instance_request_termination(instance=instance, reason=reason)
        if terminate_instance(str(instance.id)) == "terminated":
            count += 1
    return count

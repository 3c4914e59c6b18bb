"""The periodic reconciler: deadlines, heartbeats, lost commands, every model code's replicas,
under a non-blocking lease; and the cluster status."""

from __future__ import annotations

import logging
import os
import random
import socket
from datetime import timedelta
from typing import Any

import redis
from django.conf import settings
from django.db.models import Count, F, Q
from django.utils import timezone

from apps.instances import commands
from apps.instances.choices import FAILED, HOLDS_MACHINE, LIVE, InstanceStatus
from apps.instances.models import Instance, OrchestratorLock
from apps.instances.orchestrator.autoscaler import autoscale_all
from apps.instances.orchestrator.leases import commands_with_dead_holders, lease_forget
from apps.instances.orchestrator.power import instance_enforce_drain_deadlines
from apps.instances.orchestrator.scaling import (
    model_code_converge,
    model_code_finish_decommission,
)
from apps.instances.selectors import instance_last_beats
from apps.instances.services import (
    instance_fail,
    instance_request_termination,
    instance_transition,
)
from apps.models.choices import DEPLOYED_STATUSES, ModelStatus
from apps.models.models import LlmModel
from inventiv import crypto

logger = logging.getLogger(__name__)
S = InstanceStatus

MAX_PROVISION_COMMANDS = 5
# Bounded work per pass: instances moved per kind of action, model codes converged (the rest
# are taken up by the next passes, a few seconds later).
MAX_ACTIONS_PER_PASS = 500
MAX_MODEL_CODES_PER_PASS = 200
RECONCILE_LOCK = "reconcile"


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
        try:
            summary["autoscaled"] = autoscale_all()
        except Exception:  # the autoscaler must never stop the reconciler's other duties
            logger.exception("autoscaling failed")
        created = drained = 0
        pending, deferred = _model_codes_needing_action()
        if deferred:
            summary["model_codes_deferred"] = deferred
        for model_code_id in pending:
            try:
                result = model_code_converge(model_code_id=model_code_id)
            except Exception:  # one broken model code must not stop the others
                logger.exception("converging model code %s failed", model_code_id)
                continue
            created += result.created
            drained += result.drained
            model_code_finish_decommission(model_code_id=model_code_id)
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
    # Per model code (drain_timeout_s), and the scale-to-zero power-offs (orchestrator/power.py).
    return {"deadline_failures": failed, **instance_enforce_drain_deadlines(now=now)}


MASS_LOSS_LOCK = "mass-heartbeat-loss"


def _mass_loss_hold(silent: int, watched: int) -> str | None:
    """Whether to hold heartbeat failures now. A mass loss (at least
    ``MASS_HEARTBEAT_LOSS_RATIO`` of a fleet of 3+ serving instances silent at once) points at
    the control plane's own network or database, not at the machines: failures are held, but
    only for ``MASS_HEARTBEAT_LOSS_HOLD_S``; a loss that lasts longer is treated as real."""
    if watched < 3 or silent < watched * settings.MASS_HEARTBEAT_LOSS_RATIO:
        OrchestratorLock.objects.filter(name=MASS_LOSS_LOCK).delete()
        return None
    now = timezone.now()
    lock, _ = OrchestratorLock.objects.get_or_create(
        name=MASS_LOSS_LOCK, defaults={"last_run_at": now}
    )
    since = lock.last_run_at or now
    held = (now - since).total_seconds()
    if held > settings.MASS_HEARTBEAT_LOSS_HOLD_S:
        logger.warning("heartbeat loss of %d/%d lasted %.0fs: handling it", silent, watched, held)
        return None
    logger.warning("mass heartbeat loss: %d of %d instances silent; holding", silent, watched)
    return f"{silent}/{watched}"


def _model_codes_needing_action() -> tuple[list[int], int]:
    """The model codes a converge would change, selected in one query: deploying (to settle),
    decommissioning, or active with a live count other than their desired replicas. A
    converged model code costs nothing here. At most ``MAX_MODEL_CODES_PER_PASS`` (a random
    choice when more need action, so that none starves); returns them and how many wait."""
    ids = list(
        LlmModel.objects.filter(status__in=[*DEPLOYED_STATUSES, ModelStatus.DECOMMISSIONING])
        .annotate(live=Count("instances", filter=Q(instances__status__in=LIVE)))
        .filter(~Q(status=ModelStatus.ACTIVE) | ~Q(live=F("desired_replicas")))
        .order_by("id")
        .values_list("id", flat=True)
    )
    if len(ids) <= MAX_MODEL_CODES_PER_PASS:
        return ids, 0
    return sorted(random.sample(ids, MAX_MODEL_CODES_PER_PASS)), len(ids) - MAX_MODEL_CODES_PER_PASS


def _silent_candidates(cutoff: Any, now: Any) -> Q:
    """Recorded beat (database) past ``cutoff`` and not in maintenance: a superset of the
    silent ones, which the leases then narrow down."""
    return (Q(last_heartbeat_at__isnull=True) | Q(last_heartbeat_at__lt=cutoff)) & ~Q(
        maintenance_until__gt=now
    )


def _confirmed_silent(instances: list[Instance], cutoff: Any) -> list[Instance]:
    """Those whose heartbeat lease is missing or older than ``cutoff`` too."""
    beats = instance_last_beats(i.id for i in instances)
    limit = cutoff.timestamp()
    return [i for i in instances if beats.get(str(i.id), 0.0) < limit]


def _check_heartbeats() -> dict[str, Any]:
    """ready/starting → unavailable after missed heartbeats; unavailable too long → replaced,
    unless a mass loss is being held (see ``_mass_loss_hold``).

    Proportional to change: the serving count and the silent candidates are selected in SQL
    (one aggregate, then only the candidates are loaded), the leases of the candidates alone
    are read, and at most ``MAX_ACTIONS_PER_PASS`` instances are moved (the rest next pass)."""
    now = timezone.now()
    cutoff = now - timedelta(seconds=settings.HEARTBEAT_DEADLINE_S)
    candidates_q = _silent_candidates(cutoff, now)
    serving_statuses = [S.STARTING, S.READY]
    counts = Instance.objects.filter(status__in=serving_statuses).aggregate(
        serving=Count("id"), silent=Count("id", filter=candidates_q)
    )
    serving, newly_silent = int(counts["serving"]), int(counts["silent"])
    silent: list[Instance] = []
    if newly_silent:
        loaded = list(
            Instance.objects.select_related("llm_model")
            .filter(candidates_q, status__in=serving_statuses)
            .order_by("last_heartbeat_at")[: MAX_ACTIONS_PER_PASS * 4]
        )
        silent = _confirmed_silent(loaded, cutoff)
        # A beat renewed only in the lease is a live instance: discount it from the loss.
        newly_silent -= len(loaded) - len(silent)
    held = _mass_loss_hold(newly_silent, serving)
    if held:
        return {"mass_heartbeat_loss": held}
    marked = replaced = 0
    for instance in silent[:MAX_ACTIONS_PER_PASS]:
        age = (now - (instance.last_heartbeat_at or instance.status_changed_at)).total_seconds()
        if instance_transition(
            instance=instance,
            to=S.UNAVAILABLE,
            expected=S(instance.status),
            reason=f"no heartbeat for {age:.0f}s",
        ):
            marked += 1
    replace_cutoff = now - timedelta(seconds=settings.UNAVAILABLE_REPLACE_AFTER_S)
    stale = list(
        Instance.objects.select_related("llm_model")
        .filter(candidates_q, status=S.UNAVAILABLE, status_changed_at__lt=replace_cutoff)
        .order_by("status_changed_at")[:MAX_ACTIONS_PER_PASS]
    )
    for instance in _confirmed_silent(stale, cutoff):
        if instance_request_termination(
            instance=instance,
            reason=f"unavailable over {settings.UNAVAILABLE_REPLACE_AFTER_S:.0f}s: replaced",
            expected=S.UNAVAILABLE,
        ):
            replaced += 1
    return {"marked_unavailable": marked, "replaced_unavailable": replaced}


def _resend_lost_commands() -> dict[str, int]:
    """Re-send provision/terminate commands whose worker died mid-command (its command lease
    expired while held: within ``COMMAND_LEASE_S``) or that nobody took up for
    ``COMMAND_RESEND_AFTER_S`` (a lost after-commit enqueue). Bounded: an instance whose
    provisioning was re-sent too often fails."""
    now = timezone.now()
    cutoff = now - timedelta(seconds=settings.COMMAND_RESEND_AFTER_S)
    resent = 0
    dead = commands_with_dead_holders()
    stale = Instance.objects.select_related("llm_model").filter(
        Q(command_sent_at__isnull=True) | Q(command_sent_at__lt=cutoff) | Q(id__in=dead),
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
        send = (
            commands.provision_instance
            if instance.status == S.PROVISIONING
            else commands.terminate_instance
        )
        if str(instance.id) in dead:
            lease_forget(instance_id=str(instance.id))
        send(instance_id=str(instance.id))
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
    client = redis.Redis.from_url(settings.REDIS_URL, socket_timeout=2)
    try:
        return int(client.llen(settings.REDIS_PREFIX + "celery:celery"))
    except redis.RedisError:
        return None
    finally:
        client.close()

"""Celery tasks of the orchestrator (the seed's ``CMD:*``): thin wrappers over
``apps.instances.orchestrator``, each safe to run twice (``acks_late``, state checked first).
They are sent through ``apps.instances.commands`` (by name, after commit), never imported by
services. Retries are Celery's own: exponential backoff with jitter, bounded."""

from __future__ import annotations

import time
from typing import Any

from celery import shared_task

from apps.instances import orchestrator
from apps.instances.orchestrator.autoscaler import WAKE, autoscale_model_code
from apps.instances.providers.base import ProviderError
from inventiv.events import PONG, STAFF_GROUP, PongEvent, org_group, publish_now


@shared_task(acks_late=True, expires=60)
def ping_task(*, ping_id: str, organization_id: int, sent_at: float) -> None:
    """End-to-end self check: web → broker → worker → channel layer → WebSocket."""
    publish_now(
        [org_group(organization_id), STAFF_GROUP],
        PONG,
        PongEvent(ping_id=ping_id, sent_at=sent_at, worker_at=time.time()),
    )


@shared_task(
    acks_late=True,
    autoretry_for=(orchestrator.TransientProvisioningError,),
    retry_backoff=5,
    retry_backoff_max=120,
    retry_jitter=True,
    max_retries=5,
    soft_time_limit=240,
    time_limit=300,
)
def provision_instance_task(*, instance_id: str) -> str:
    """CMD:PROVISION_INSTANCE. Transient provider errors are retried with backoff."""
    return orchestrator.instance_provision(instance_id=instance_id)


@shared_task(
    acks_late=True,
    autoretry_for=(ProviderError,),
    retry_backoff=5,
    retry_backoff_max=300,
    retry_jitter=True,
    max_retries=10,
    soft_time_limit=240,
    time_limit=300,
)
def terminate_instance_task(*, instance_id: str) -> str:
    """CMD:TERMINATE_INSTANCE. Any provider error is retried: a machine must not be left."""
    return orchestrator.instance_terminate(instance_id=instance_id)


@shared_task(acks_late=False, expires=300, soft_time_limit=240, time_limit=300)
def instance_power_task(*, instance_id: str, action: str) -> str:
    """A power action on the instance's machine (admin "Reboot machine"). Neither retried nor
    acknowledged late: a reboot run twice is worse than one lost (the operator asks again)."""
    return orchestrator.instance_power_apply(instance_id=instance_id, action=action)


@shared_task(acks_late=True, soft_time_limit=120, time_limit=150)
def reconcile_model_task(*, model_code_id: int) -> dict[str, Any]:
    """CMD:DEPLOY / CMD:SCALE / CMD:DECOMMISSION for one model code: converge it now."""
    result = orchestrator.model_code_converge(model_code_id=model_code_id)
    orchestrator.model_code_finish_decommission(model_code_id=model_code_id)
    return {"created": result.created, "drained": result.drained}


@shared_task(acks_late=True, soft_time_limit=120, time_limit=150, expires=600)
def autoscale_wake_task(*, model_code_id: int) -> dict[str, Any]:
    """A gateway holds a request for this model code (sent once per wake, docs/autoscaling.md):
    evaluate it now (from zero: no cooldown) and converge. Safe twice: a second run finds
    the count already raised."""
    decision = autoscale_model_code(model_code_id=model_code_id, trigger=WAKE)
    return {"decision_id": decision.id if decision is not None else None}


@shared_task(acks_late=True, soft_time_limit=120, time_limit=150)
def reconcile_task() -> dict[str, Any]:
    """Periodic: converges every model code, enforces deadlines and heartbeats, re-sends lost
    commands. Holds a non-blocking lease: concurrent runs skip."""
    return orchestrator.reconcile()

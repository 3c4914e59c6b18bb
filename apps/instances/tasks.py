"""Celery tasks of the orchestrator (the seed's ``CMD:*``): thin wrappers over
``apps.instances.orchestrator``, each safe to run twice (``acks_late``, state checked first)."""

from __future__ import annotations

import logging
import time
from typing import Any

from celery import shared_task

from apps.instances import orchestrator
from inventiv.events import PONG, STAFF_GROUP, PongEvent, org_group, publish_now

logger = logging.getLogger(__name__)


@shared_task(acks_late=True, expires=60)
def ping_task(*, ping_id: str, organization_id: int, sent_at: float) -> None:
    """End-to-end self check: web → broker → worker → channel layer → WebSocket."""
    publish_now(
        [org_group(organization_id), STAFF_GROUP],
        PONG,
        PongEvent(ping_id=ping_id, sent_at=sent_at, worker_at=time.time()),
    )


@shared_task(
    bind=True,
    acks_late=True,
    max_retries=5,
    soft_time_limit=240,
    time_limit=300,
)
def provision_instance_task(self: Any, *, instance_id: str) -> str:
    """CMD:PROVISION_INSTANCE. Transient provider errors are retried with backoff."""
    try:
        return orchestrator.provision_instance(instance_id)
    except orchestrator.TransientProvisioningError as exc:
        raise self.retry(exc=exc, countdown=min(2**self.request.retries * 5, 120)) from exc


@shared_task(bind=True, acks_late=True, max_retries=10, soft_time_limit=240, time_limit=300)
def terminate_instance_task(self: Any, *, instance_id: str) -> str:
    """CMD:TERMINATE_INSTANCE. Any provider error is retried: a machine must not be left."""
    from apps.instances.providers.base import ProviderError

    try:
        return orchestrator.terminate_instance(instance_id)
    except ProviderError as exc:
        raise self.retry(exc=exc, countdown=min(2**self.request.retries * 5, 300)) from exc


@shared_task(acks_late=False, expires=300, soft_time_limit=240, time_limit=300)
def instance_power_task(*, instance_id: str, action: str) -> str:
    """A power action on the instance's machine (admin "Reboot machine"). Neither retried nor
    acknowledged late: a reboot run twice is worse than one lost (the operator asks again).
    A provider error is logged and returned, not raised."""
    from apps.instances.choices import HOLDS_MACHINE
    from apps.instances.models import Instance
    from apps.instances.providers import get_adapter
    from apps.instances.providers.base import PowerAction, ProviderError

    instance = Instance.objects.select_related("provider").filter(id=instance_id).first()
    if instance is None or instance.status not in HOLDS_MACHINE:
        return "skipped: no live instance"
    if not instance.provider_resource_id:
        return "skipped: no machine recorded"
    adapter = get_adapter(instance.provider)
    try:
        machine = adapter.get_machine(instance.provider_resource_id)
        machine = adapter.power(machine, PowerAction(action))
    except ProviderError as exc:
        logger.warning(
            "instance %s: %s of machine %s failed: %s: %s",
            instance_id,
            action,
            instance.provider_resource_id,
            exc.code,
            exc,
        )
        return f"failed: {exc.code}: {exc}"
    logger.info(
        "instance %s: %s of machine %s done (%s)",
        instance_id,
        action,
        machine.resource_id,
        machine.state,
    )
    return f"{action}: {machine.state}"


@shared_task(acks_late=True, soft_time_limit=120, time_limit=150)
def reconcile_model_task(*, model_id: int) -> dict[str, Any]:
    """CMD:DEPLOY / CMD:SCALE / CMD:DECOMMISSION for one model code: converge it now."""
    result = orchestrator.converge_model(model_id)
    orchestrator.model_finish_decommission(model_id)
    return {"created": result.created, "drained": result.drained}


@shared_task(acks_late=True, soft_time_limit=120, time_limit=150)
def reconcile_task() -> dict[str, Any]:
    """Periodic: converges every model code, enforces deadlines and heartbeats, re-sends lost
    commands. Holds a non-blocking lease: concurrent runs skip."""
    return orchestrator.reconcile()

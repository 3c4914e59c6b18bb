"""Celery tasks of the orchestrator: thin wrappers over services, each safe to run twice."""

from __future__ import annotations

import time

from celery import shared_task

from inventiv.events import STAFF_GROUP, org_group, publish_now


@shared_task(acks_late=True, expires=60)
def ping_task(*, ping_id: str, organization_id: int, sent_at: float) -> None:
    """End-to-end self check: web → broker → worker → channel layer → WebSocket."""
    publish_now(
        [org_group(organization_id), STAFF_GROUP],
        "EVENT:PONG",
        {"ping_id": ping_id, "sent_at": sent_at, "worker_at": time.time()},
    )


@shared_task(acks_late=True)
def reconcile_task() -> None:
    """Placeholder replaced by the orchestrator's reconciler."""

"""Celery tasks for providers: catalog sync and the sweeper. Thin wrappers over
``apps.instances.providers.catalog`` and ``apps.instances.providers.sweeper``; each is safe to
run twice."""

from __future__ import annotations

from typing import Any

from celery import shared_task

from apps.instances.providers.catalog import catalog_sync, syncable_provider_ids
from apps.instances.providers.sweeper import sweep_provider, sweepable_provider_ids


@shared_task(acks_late=True, soft_time_limit=240, time_limit=300)
def catalog_sync_task(*, provider_id: int) -> dict[str, Any]:
    """Refresh one provider's catalog (types, prices, availability)."""
    return catalog_sync(provider_id=provider_id).as_dict()


@shared_task(acks_late=True, soft_time_limit=60, time_limit=90)
def catalog_sync_all_task() -> int:
    """Periodic: one catalog sync task per enabled cloud provider (so one slow cloud never
    delays another)."""
    ids = syncable_provider_ids()
    for provider_id in ids:
        catalog_sync_task.delay(provider_id=provider_id)
    return len(ids)


@shared_task(acks_late=True, soft_time_limit=240, time_limit=300)
def sweep_provider_task(*, provider_id: int) -> dict[str, Any]:
    """Remove one provider's orphaned tagged resources (after the grace period)."""
    return sweep_provider(provider_id=provider_id).as_dict()


@shared_task(acks_late=True, soft_time_limit=60, time_limit=90)
def sweep_all_task() -> int:
    """Periodic: one sweep task per enabled provider."""
    ids = sweepable_provider_ids()
    for provider_id in ids:
        sweep_provider_task.delay(provider_id=provider_id)
    return len(ids)

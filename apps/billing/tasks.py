from __future__ import annotations

from celery import shared_task

from apps.billing.services import usage_flush


@shared_task(acks_late=True, time_limit=60, soft_time_limit=50)
def usage_flush_task() -> int:
    """Periodic (beat ``usage-flush``): buffered usage records → database. Safe to run twice."""
    return usage_flush()

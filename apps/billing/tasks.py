from __future__ import annotations

from celery import shared_task

from apps.billing.services import usage_flush
from apps.billing.services.budgets import budgets_enforce


@shared_task(acks_late=True, time_limit=60, soft_time_limit=50)
def usage_flush_task() -> int:
    """Periodic (beat ``usage-flush``): buffered usage records → database. Safe to run twice."""
    return usage_flush()


@shared_task(acks_late=True, time_limit=120, soft_time_limit=100)
def budgets_enforce_task() -> int:
    """Periodic (beat ``budgets-enforce``): rollups, prices and limits to the gateways, blocks
    and unblocks, warnings. Safe to run twice. Returns how many budgets are blocked."""
    return sum(1 for state in budgets_enforce() if state.blocked)

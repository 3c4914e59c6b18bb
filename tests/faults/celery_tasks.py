"""A task for the time-limit test, included in a worker with ``-I tests.faults.celery_tasks``."""

from __future__ import annotations

import time
from pathlib import Path

from celery import shared_task


@shared_task(acks_late=True, time_limit=1, soft_time_limit=1)
def overrun_task(*, marker: str, seconds: float) -> None:
    """Sleeps past its time limit, then writes ``marker``: under a pool that enforces the
    limit, the marker never appears."""
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:  # a busy loop is what a stuck SDK call looks like
        time.sleep(0.01)
    Path(marker).write_text("ran past its time limit")

"""Helpers shared by the cloud adapters: tags, polling with a deadline, timeouts."""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import TypeVar

from django.conf import settings

from apps.instances.providers.base import INSTANCE_TAG, MANAGED_TAG

T = TypeVar("T")


def managed_value() -> str:
    return str(settings.DEPLOYMENT_NAME)


def our_tags(instance_id: str) -> dict[str, str]:
    """The tags every resource of ``instance_id`` carries."""
    return {INSTANCE_TAG: instance_id, MANAGED_TAG: managed_value()}


def call_timeout() -> float:
    return float(settings.PROVIDER_CALL_TIMEOUT_S)


def poll_until(
    fetch: Callable[[], T],
    done: Callable[[T], bool],
    *,
    timeout: float,
    interval: float | None = None,
) -> tuple[T, bool]:
    """Call ``fetch`` until ``done(value)`` or ``timeout`` seconds pass. Returns the last value
    and whether it is done (a timeout is not an error: callers decide)."""
    step = float(settings.PROVIDER_POLL_INTERVAL_S) if interval is None else interval
    deadline = time.monotonic() + timeout
    value = fetch()
    while not done(value) and time.monotonic() < deadline:
        time.sleep(min(step, max(deadline - time.monotonic(), 0)))
        value = fetch()
    return value, done(value)

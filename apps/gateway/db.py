"""Running ORM reads from the gateway's event loop, in a small thread pool."""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from typing import Any, TypeVar

from django.db import close_old_connections

T = TypeVar("T")


def _run(fn: Callable[..., T], kwargs: dict[str, Any]) -> T:
    close_old_connections()  # drop connections that broke or outlived CONN_MAX_AGE
    try:
        return fn(**kwargs)
    finally:
        close_old_connections()


async def db_call(executor: ThreadPoolExecutor, fn: Callable[..., T], **kwargs: Any) -> T:
    return await asyncio.get_running_loop().run_in_executor(executor, _run, fn, kwargs)

from __future__ import annotations

import asyncio
from typing import Any

from django.db import connection

from tests.instances.conftest import local_provider, mock_model  # noqa: F401  (fixtures)


async def in_thread(fn: Any, *args: Any, **kwargs: Any) -> Any:
    """``fn`` in a thread, whose database connection then goes back to the pool (a thread that
    kept it would hold the test database open at teardown)."""

    def run() -> Any:
        try:
            return fn(*args, **kwargs)
        finally:
            connection.close()

    return await asyncio.to_thread(run)

"""Keeps the routing table in step with the database: a full reload at start, after instance
events (coalesced) and periodically; a one-model lookup on a miss (with a short negative
cache), so that a model code created a moment ago is found at once."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from concurrent.futures import ThreadPoolExecutor

from django.conf import settings

from apps.gateway import selectors
from apps.gateway.db import db_call
from apps.gateway.routing import ModelRoute, RoutingTable

logger = logging.getLogger("apps.gateway")
_NEGATIVE_TTL_S = 1.0


class Directory:
    def __init__(self, table: RoutingTable, executor: ThreadPoolExecutor) -> None:
        self.table = table
        self._executor = executor
        self._wake = asyncio.Event()
        self._unknown: dict[tuple[int, str], float] = {}
        self.refresh_s = settings.GATEWAY_ROUTING_REFRESH_S

    async def reload(self) -> None:
        models = await db_call(self._executor, selectors.routing_snapshot)
        self.table.replace(models)
        self._unknown.clear()

    def schedule_reload(self) -> None:
        self._wake.set()

    async def run(self) -> None:
        """Reload when woken by an event (several events → one reload) or periodically."""
        while True:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._wake.wait(), timeout=self.refresh_s)
            self._wake.clear()
            try:
                await self.reload()
            except Exception:
                logger.exception("routing table reload failed")
                await asyncio.sleep(1)

    async def lookup(self, organization_id: int, name: str) -> ModelRoute | None:
        route = self.table.get(organization_id, name)
        if route is not None:
            return route
        key = (organization_id, name)
        until = self._unknown.get(key)
        if until is not None and until > time.monotonic():
            return None
        models = await db_call(
            self._executor, selectors.routing_snapshot, organization_id=organization_id, name=name
        )
        if not models:
            if len(self._unknown) > 10_000:
                self._unknown.clear()
            self._unknown[key] = time.monotonic() + _NEGATIVE_TTL_S
            return None
        return self.table.upsert(models[0])

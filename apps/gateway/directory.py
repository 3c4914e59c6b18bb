"""Keeps the routing table in step with the database: a full reload at start, after model-code
events (coalesced) and periodically as the safety net; instance events applied as deltas (an
instance no longer ready leaves its model code's route at once, in memory; a ready one is read
alone, off the loop, and added); a one-model lookup on a miss (with a short negative cache), so
that a model code created a moment ago is found at once.

A full reload never blocks the event loop: the snapshot is read and its routes built in the
executor's thread; the loop only swaps them in. Instance events that arrive while a reload is
in flight are applied again after it is installed (the snapshot may predate them)."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from concurrent.futures import ThreadPoolExecutor
from typing import Any

from django.conf import settings

from apps.gateway import selectors
from apps.gateway.db import db_call
from apps.gateway.routing import ModelRoute, PreparedTable, RoutingTable
from apps.instances.choices import ROUTABLE

logger = logging.getLogger("apps.gateway")
_NEGATIVE_TTL_S = 1.0


class Directory:
    def __init__(self, table: RoutingTable, executor: ThreadPoolExecutor) -> None:
        self.table = table
        self._executor = executor
        self._wake = asyncio.Event()
        self._unknown: dict[tuple[int, str], float] = {}
        self.refresh_s = settings.GATEWAY_ROUTING_REFRESH_S
        # Per instance, a count of its events: a read started before the latest is dropped.
        self._generation: dict[str, int] = {}
        self._during_reload: list[dict[str, Any]] | None = None
        self._tasks: set[asyncio.Task[None]] = set()

    def _load(self) -> PreparedTable:
        return self.table.prepare(selectors.routing_snapshot())

    async def reload(self) -> None:
        self._during_reload = []
        try:
            prepared = await db_call(self._executor, self._load)
            self.table.install(prepared)
            self._unknown.clear()
            missed, self._during_reload = self._during_reload, None
        finally:
            self._during_reload = None
        for data in missed:
            await self.apply_instance_event(data)

    def instance_event(self, data: dict[str, Any]) -> None:
        """Apply an ``EVENT:INSTANCE_*`` payload (``InstanceStatusEvent``) in the background."""
        task = asyncio.get_running_loop().create_task(self.apply_instance_event(data))
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def apply_instance_event(self, data: dict[str, Any]) -> None:
        """One instance's new status as a delta on its model code's route: removed unless
        ready; added (read alone, off the loop) when ready. A model code the table does not
        hold, or a malformed payload, schedules a full reload instead."""
        try:
            instance_id = str(data["instance_id"])
            model_code_id = int(data["model_code_id"])
            status = str(data["status"])
        except (KeyError, TypeError, ValueError):
            self.schedule_reload()
            return
        if self._during_reload is not None:
            self._during_reload.append(data)
        generation = self._generation.get(instance_id, 0) + 1
        self._generation[instance_id] = generation
        if len(self._generation) > 200_000:
            self._generation = {instance_id: generation}
        if status not in ROUTABLE:
            self.table.remove_instance(model_code_id, instance_id)
            return
        snapshot = await db_call(
            self._executor,
            selectors.instance_route_snapshot,
            instance_id=instance_id,
            model_code_id=model_code_id,
        )
        if self._generation.get(instance_id) != generation:
            return  # a later event of this instance was applied meanwhile: it decides
        if snapshot is None:
            self.table.remove_instance(model_code_id, instance_id)
        elif not self.table.add_instance(model_code_id, snapshot):
            self.schedule_reload()

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

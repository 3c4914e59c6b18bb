"""Hands usage records to the shared buffer (Redis, or in-process in the embedded mode) in
small batches: one RPUSH every few milliseconds instead of one per request, off the response
path. At most the last batch interval is lost if the process is killed."""

from __future__ import annotations

import asyncio
import contextlib
import logging
from typing import Any

import orjson

from apps.gateway.backends import usage_buffer

logger = logging.getLogger("apps.gateway")
BATCH_INTERVAL_S = 0.02
BATCH_MAX = 500


class UsageRecorder:
    def __init__(self) -> None:
        self._pending: list[bytes] = []
        self._buffer = usage_buffer()
        self._wake = asyncio.Event()

    def record(self, record: dict[str, Any]) -> None:
        self._pending.append(orjson.dumps(record))
        if len(self._pending) >= BATCH_MAX:
            self._wake.set()

    async def flush(self) -> None:
        if not self._pending:
            return
        batch, self._pending = self._pending, []
        try:
            await self._buffer.push(batch)
        except Exception:
            # Keep them for the next try: usage must not be lost to a Redis hiccup.
            logger.exception("could not buffer %d usage records; will retry", len(batch))
            self._pending[:0] = batch
            raise

    async def run(self) -> None:
        while True:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._wake.wait(), timeout=BATCH_INTERVAL_S)
            self._wake.clear()
            try:
                await self.flush()
            except Exception:
                await asyncio.sleep(0.5)

"""The usage buffer between the gateways and the worker, and the gateway's batching writer.

* ``UsageBuffer``: usage records as opaque bytes (``UsageRecordData.to_json``), in two
  implementations: a Redis list (production), that every gateway appends to and the worker's
  ``usage_flush`` drains; or an in-process deque (embedded mode only, ``REDIS_URL`` unset),
  valid because the embedded mode runs gateway and worker in one process. ``usage_buffer()``
  picks the implementation from the settings.
* ``UsageRecorder``: hands the gateway's records to the buffer in small batches: one RPUSH
  every few milliseconds instead of one per request, off the response path. At most the last
  batch interval is lost if the process is killed.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import threading
from collections import deque
from typing import Protocol, cast

import redis
import redis.asyncio as aioredis
from django.conf import settings

from apps.gateway.usage_record import UsageRecordData

logger = logging.getLogger("apps.gateway")
BATCH_INTERVAL_S = 0.02
BATCH_MAX = 500


class UsageBuffer(Protocol):
    """Records are opaque bytes (JSON). ``push`` is called by gateways; ``peek``/``ack`` by the
    flush task, under ``lock`` so that two flushes never ack each other's records."""

    async def push(self, records: list[bytes]) -> None: ...

    def peek(self, count: int) -> list[bytes]: ...

    def ack(self, count: int) -> None: ...

    def lock(self, ttl_s: float) -> bool: ...

    def unlock(self) -> None: ...

    def size(self) -> int: ...


# --- Redis ---------------------------------------------------------------------------------------


def _redis_url() -> str:
    url = settings.REDIS_URL
    assert url, "the Redis implementation is picked only when REDIS_URL is set"
    return url


class RedisUsageBuffer:
    """Clients are created on first use: the async one inside the gateway's event loop, the
    sync one in the worker."""

    def __init__(self) -> None:
        self._key = settings.REDIS_PREFIX + "usage:buffer"
        self._lock_key = settings.REDIS_PREFIX + "usage:flush-lock"
        self._async: aioredis.Redis | None = None
        self._sync: redis.Redis | None = None

    def _client(self) -> redis.Redis:
        if self._sync is None:
            self._sync = redis.Redis.from_url(_redis_url())
        return self._sync

    async def push(self, records: list[bytes]) -> None:
        if self._async is None:
            self._async = aioredis.Redis.from_url(_redis_url(), max_connections=64)
        await self._async.rpush(self._key, *records)

    def peek(self, count: int) -> list[bytes]:
        # bytes, not str: the client is created without decode_responses.
        return cast("list[bytes]", self._client().lrange(self._key, 0, count - 1))

    def ack(self, count: int) -> None:
        self._client().ltrim(self._key, count, -1)

    def lock(self, ttl_s: float) -> bool:
        return bool(self._client().set(self._lock_key, b"1", nx=True, px=int(ttl_s * 1000)))

    def unlock(self) -> None:
        self._client().delete(self._lock_key)

    def size(self) -> int:
        return int(self._client().llen(self._key))


# --- In-process (embedded mode) ----------------------------------------------------------------


class InProcessUsageBuffer:
    def __init__(self) -> None:
        self._items: deque[bytes] = deque()
        self._lock = threading.Lock()
        self._flush_lock = threading.Lock()

    async def push(self, records: list[bytes]) -> None:
        with self._lock:
            self._items.extend(records)

    def peek(self, count: int) -> list[bytes]:
        with self._lock:
            return [self._items[i] for i in range(min(count, len(self._items)))]

    def ack(self, count: int) -> None:
        with self._lock:
            for _ in range(min(count, len(self._items))):
                self._items.popleft()

    def lock(self, ttl_s: float) -> bool:
        return self._flush_lock.acquire(blocking=False)

    def unlock(self) -> None:
        if self._flush_lock.locked():
            self._flush_lock.release()

    def size(self) -> int:
        with self._lock:
            return len(self._items)


_in_process_buffer = InProcessUsageBuffer()


def usage_buffer() -> UsageBuffer:
    if settings.REDIS_URL:
        return RedisUsageBuffer()
    return _in_process_buffer


# --- The gateway's writer ------------------------------------------------------------------------


class UsageRecorder:
    def __init__(self) -> None:
        self._pending: list[bytes] = []
        self._buffer = usage_buffer()
        self._wake = asyncio.Event()

    def record(self, record: UsageRecordData) -> None:
        self._pending.append(record.to_json())
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

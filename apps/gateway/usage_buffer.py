"""The usage buffer between the gateways and the worker, and the gateway's write-ahead recorder.

Guarantees (see docs/gateway.md, "Usage that survives faults"):

* **Written before it is delivered.** The gateway hands a request's final record to the buffer
  and waits until the buffer holds it *before* the last bytes of the answer leave; a stream's
  progress is written as a checkpoint (the tokens about to be sent, and what the record would
  be if nothing else came) before each relayed batch of events is sent
  (``USAGE_CHECKPOINT_INTERVAL_S`` = 0, the default) or at most that often without waiting
  (> 0: a killed gateway then loses at most that long of one stream's tokens); a stream's first
  checkpoint is always written, a later one only if it bills more. Each write goes from its
  request's coroutine to the process's pipelined connection (one system call per event-loop
  turn for all of them): a final record is one script (fused with the request's governance
  finish when it has one), a checkpoint one ``HSET``; only the recorder's retries are grouped,
  in one transaction per attempt. A request is finished at most once (the finish marker in
  ``apps.gateway.governance``): a fused script that fails is followed by the separate finish,
  and a refused plain answer bills what it delivered (``AccountedSend._refuse``).
* **Exactly what was written is acknowledged.** Final records go to a Redis Stream read by a
  consumer group: a flush reads entries (``XREADGROUP``), writes them, then acknowledges and
  deletes exactly those entry ids (``XACK``/``XDEL``). Entries a dead or stalled flush read
  but never acknowledged are claimed by the next flush after ``USAGE_CLAIM_IDLE_S``
  (``XAUTOCLAIM``). Two flushes never delete each other's records; a record read twice is
  written once (the database is idempotent by request id).
* **A dead gateway's streams are billed.** Checkpoints live in one hash per gateway process,
  next to a liveness key it refreshes every second (TTL ``USAGE_GATEWAY_TTL_S``). The flush
  turns the checkpoints of a gateway whose liveness key expired into records (they were
  written ahead, so they hold at least what was delivered) and deletes exactly the fields it
  read. A final record deletes its request's checkpoint in the same transaction.
* **Redis restarts lose nothing** when Redis persists (compose: ``appendonly yes``,
  ``appendfsync everysec``; a killed redis-server loses nothing it acknowledged, only an OS
  crash can lose up to a second). While Redis is unreachable, answers wait for it up to
  ``USAGE_WRITE_TIMEOUT_S``, then are cut (``usage_unavailable``) rather than delivered
  unrecorded; the recorder keeps retrying what it holds.
* **Bounded, and loud when behind.** The backlog (stream length) is sampled every second into
  ``gateway_usage_backlog_records``; above ``USAGE_BACKLOG_ALERT`` the gateway and the flush
  log a warning. What a gateway holds in memory is bounded by its requests in flight.

Two implementations of one interface: Redis (production) and in-process (embedded mode only,
``REDIS_URL`` unset: gateway and worker share the process, so memory is as durable as they are).
``usage_buffer()`` picks one from the settings.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import socket
import threading
import time
from collections.abc import Awaitable, Callable
from typing import Any, Protocol, cast

import redis
from django.conf import settings

from apps.gateway import metrics
from apps.gateway.errors import GatewayError
from apps.gateway.redis_pipe import Script, close_shared, shared_pipe
from apps.gateway.request import Message, Request, Send
from apps.gateway.usage_record import FINAL_SEQ, UsageRecordData

logger = logging.getLogger("apps.gateway")
HEARTBEAT_S = 1.0
RETRY_S = 0.2
REFUSE_PROBE_S = 1.0  # a refusal's own try to write, after the answer's write timed out
GROUP = "billing"


class UsageUnavailable(Exception):
    """The buffer did not take a record within ``USAGE_WRITE_TIMEOUT_S``."""


class UsageBuffer(Protocol):
    """Gateway side (async): ``write``, ``heartbeat``, ``retire``. Flush side (sync): ``read``,
    ``ack``, ``orphans``, ``drop_orphans``, ``depth``. Records are opaque bytes (JSON)."""

    async def write(
        self, *, gateway_id: str, finals: dict[str, bytes], checkpoints: dict[str, bytes]
    ) -> None:
        """Atomically: append ``finals`` to the stream, delete their checkpoints, and set
        ``checkpoints`` (request id → record) in the gateway's in-flight hash."""

    def final_target(self, gateway_id: str) -> tuple[str, str, str] | None:
        """Where a script may write a final record itself, atomically with other work (the
        Redis URL, the stream, the gateway's in-flight hash: ``XADD`` the record, ``HDEL`` its
        checkpoint); None if the buffer is not in Redis."""

    async def heartbeat(self, *, gateway_id: str, ttl_s: float) -> int:
        """Refresh the gateway's liveness; return the backlog (records not yet flushed)."""

    async def retire(self, *, gateway_id: str) -> None:
        """A clean stop: the gateway's liveness key goes (its hash is empty by then)."""

    async def aclose(self) -> None:
        """Close the async client (the event loop is ending)."""

    def read(self, *, consumer: str, count: int, claim_idle_s: float) -> list[tuple[str, bytes]]:
        """Up to ``count`` entries for this consumer: first those another consumer read and
        left unacknowledged for ``claim_idle_s``, then new ones."""

    def ack(self, ids: list[str]) -> None:
        """Acknowledge and delete exactly these entries."""

    def orphans(self) -> list[tuple[str, dict[str, bytes]]]:
        """The checkpoints of gateways whose liveness expired: (gateway id, {request id: raw})."""

    def drop_orphans(self, gateway_id: str, records: dict[str, bytes]) -> None:
        """Delete these checkpoints, each only if unchanged since read; forget the gateway once
        it has none left."""

    def depth(self) -> int:
        """Records in the stream (flushed ones are deleted)."""


# --- Redis ---------------------------------------------------------------------------------------


def _redis_url() -> str:
    url = settings.REDIS_URL
    assert url, "the Redis implementation is picked only when REDIS_URL is set"
    return url


# Delete each (field, value) pair of the hash KEYS[1] if unchanged; then drop the gateway
# (ARGV[#ARGV]) from the set KEYS[3] if its hash is empty and its liveness key KEYS[2] is gone.
_DROP_ORPHANS = """
for i = 1, #ARGV - 1, 2 do
  if redis.call('HGET', KEYS[1], ARGV[i]) == ARGV[i + 1] then
    redis.call('HDEL', KEYS[1], ARGV[i])
  end
end
if redis.call('HLEN', KEYS[1]) == 0 and redis.call('EXISTS', KEYS[2]) == 0 then
  redis.call('SREM', KEYS[3], ARGV[#ARGV])
end
return 1
"""


# A final record: append it to the stream (KEYS[1]), delete its checkpoint (field ARGV[1] of the
# gateway's in-flight hash KEYS[2]); atomic, as the MULTI it replaces.
_FINAL_SCRIPT = Script(
    "redis.call('XADD', KEYS[1], '*', 'r', ARGV[2])\n"
    "redis.call('HDEL', KEYS[2], ARGV[1])\n"
    "return 0\n"
)


class RedisUsageBuffer:
    """The gateway's side (async) goes through its event loop's pipelined connection
    (``apps.gateway.redis_pipe``, shared with governance: one transaction per write, pipelined
    with the requests' scripts); the worker's (sync) through redis-py, created on first use.
    ``url``: another Redis than ``REDIS_URL`` (tests, benchmarks)."""

    def __init__(self, url: str | None = None) -> None:
        self._url = url or _redis_url()
        prefix = settings.REDIS_PREFIX + "usage:"
        self._stream = prefix + "stream"
        self._gateways = prefix + "gateways"
        self._alive = prefix + "alive:"
        self._inflight = prefix + "inflight:"
        self._sync: redis.Redis | None = None
        self._group_ready = False

    def _client(self) -> redis.Redis:
        if self._sync is None:
            self._sync = redis.Redis.from_url(
                self._url, socket_timeout=10, socket_connect_timeout=3
            )
        return self._sync

    async def write(
        self, *, gateway_id: str, finals: dict[str, bytes], checkpoints: dict[str, bytes]
    ) -> None:
        hash_key = self._inflight + gateway_id
        if len(finals) == 1 and not checkpoints:
            # One request's final record (the direct path): one script, one reply, instead of
            # MULTI, XADD, HDEL, EXEC and their four replies.
            ((request_id, raw),) = finals.items()
            await shared_pipe(self._url).evalsha(
                _FINAL_SCRIPT, [self._stream, hash_key], [request_id, raw]
            )
            return
        commands: list[tuple[Any, ...]] = [
            ("XADD", self._stream, "*", b"r", raw) for raw in finals.values()
        ]
        if finals:
            commands.append(("HDEL", hash_key, *finals))
        if checkpoints:
            fields = [part for item in checkpoints.items() for part in item]
            commands.append(("HSET", hash_key, *fields))
        if len(commands) == 1:
            # One command is atomic by itself (a stream's checkpoint): no MULTI, one reply.
            await shared_pipe(self._url).execute(*commands[0])
        elif commands:
            await shared_pipe(self._url).transaction(commands)

    def final_target(self, gateway_id: str) -> tuple[str, str, str] | None:
        return self._url, self._stream, self._inflight + gateway_id

    async def heartbeat(self, *, gateway_id: str, ttl_s: float) -> int:
        result = await shared_pipe(self._url).transaction(
            [
                ("SET", self._alive + gateway_id, b"1", "PX", int(ttl_s * 1000)),
                ("SADD", self._gateways, gateway_id),
                ("XLEN", self._stream),
            ]
        )
        return int(result[-1])

    async def retire(self, *, gateway_id: str) -> None:
        await shared_pipe(self._url).execute("DEL", self._alive + gateway_id)

    async def aclose(self) -> None:
        await close_shared()

    def _ensure_group(self) -> None:
        try:
            self._client().xgroup_create(self._stream, GROUP, id="0", mkstream=True)
        except redis.ResponseError as exc:
            if "BUSYGROUP" not in str(exc):
                raise
        self._group_ready = True

    def read(self, *, consumer: str, count: int, claim_idle_s: float) -> list[tuple[str, bytes]]:
        client = self._client()
        if not self._group_ready:
            self._ensure_group()
        try:
            claimed: Any = client.xautoclaim(
                self._stream, GROUP, consumer, min_idle_time=int(claim_idle_s * 1000), count=count
            )
            entries: list[tuple[bytes, dict[bytes, bytes] | None]] = list(claimed[1])
            if len(entries) < count:
                fresh: Any = client.xreadgroup(
                    GROUP, consumer, {self._stream: ">"}, count=count - len(entries)
                )
                for _stream, items in fresh or []:
                    entries.extend(items)
        except redis.ResponseError as exc:
            if "NOGROUP" not in str(exc):
                raise
            self._group_ready = False  # Redis lost the group (restarted without persistence)
            return []
        out: list[tuple[str, bytes]] = []
        for entry_id, fields in entries:
            if fields:  # an entry deleted while pending reads back as (id, None)
                out.append((_text(entry_id), fields[b"r"]))
            else:
                self.ack([_text(entry_id)])
        return out

    def ack(self, ids: list[str]) -> None:
        if not ids:
            return
        pipe = self._client().pipeline(transaction=True)
        pipe.xack(self._stream, GROUP, *ids)
        pipe.xdel(self._stream, *ids)
        pipe.execute()

    def orphans(self) -> list[tuple[str, dict[str, bytes]]]:
        client = self._client()
        out: list[tuple[str, dict[str, bytes]]] = []
        for raw_id in cast("set[bytes]", client.smembers(self._gateways)):
            gateway_id = _text(raw_id)
            if client.exists(self._alive + gateway_id):
                continue
            fields = cast("dict[bytes, bytes]", client.hgetall(self._inflight + gateway_id))
            out.append((gateway_id, {_text(k): v for k, v in fields.items()}))
        return out

    def drop_orphans(self, gateway_id: str, records: dict[str, bytes]) -> None:
        args: list[str | bytes] = []
        for request_id, raw in records.items():
            args += [request_id, raw]
        keys = [self._inflight + gateway_id, self._alive + gateway_id, self._gateways]
        self._client().eval(_DROP_ORPHANS, 3, *keys, *args, gateway_id)

    def depth(self) -> int:
        return int(self._client().xlen(self._stream))


def _text(value: bytes | str) -> str:
    return value.decode() if isinstance(value, bytes) else value


# --- In-process (embedded mode) ----------------------------------------------------------------


class InProcessUsageBuffer:
    """The same semantics in memory, for the embedded mode (and the suite)."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._seq = 0
        self._entries: dict[str, bytes] = {}  # entry id → record, in order
        self._delivered: dict[str, tuple[str, float]] = {}  # entry id → (consumer, when)
        self._inflight: dict[str, dict[str, bytes]] = {}  # gateway id → checkpoints
        self._alive: dict[str, float] = {}  # gateway id → expiry (monotonic)

    async def write(
        self, *, gateway_id: str, finals: dict[str, bytes], checkpoints: dict[str, bytes]
    ) -> None:
        with self._lock:
            hashed = self._inflight.setdefault(gateway_id, {})
            for request_id, raw in finals.items():
                self._seq += 1
                self._entries[f"{self._seq}-0"] = raw
                hashed.pop(request_id, None)
            hashed.update(checkpoints)

    def final_target(self, gateway_id: str) -> tuple[str, str, str] | None:
        return None

    async def heartbeat(self, *, gateway_id: str, ttl_s: float) -> int:
        with self._lock:
            self._alive[gateway_id] = time.monotonic() + ttl_s
            self._inflight.setdefault(gateway_id, {})
            return len(self._entries)

    async def retire(self, *, gateway_id: str) -> None:
        with self._lock:
            self._alive.pop(gateway_id, None)

    async def aclose(self) -> None:
        pass

    def read(self, *, consumer: str, count: int, claim_idle_s: float) -> list[tuple[str, bytes]]:
        now = time.monotonic()
        with self._lock:
            out: list[tuple[str, bytes]] = []
            for entry_id, raw in self._entries.items():
                if len(out) >= count:
                    break
                owner = self._delivered.get(entry_id)
                if owner is None or (owner[0] != consumer and now - owner[1] >= claim_idle_s):
                    self._delivered[entry_id] = (consumer, now)
                    out.append((entry_id, raw))
            return out

    def ack(self, ids: list[str]) -> None:
        with self._lock:
            for entry_id in ids:
                self._entries.pop(entry_id, None)
                self._delivered.pop(entry_id, None)

    def orphans(self) -> list[tuple[str, dict[str, bytes]]]:
        now = time.monotonic()
        with self._lock:
            return [
                (gateway_id, dict(records))
                for gateway_id, records in self._inflight.items()
                if self._alive.get(gateway_id, 0) < now
            ]

    def drop_orphans(self, gateway_id: str, records: dict[str, bytes]) -> None:
        with self._lock:
            hashed = self._inflight.get(gateway_id, {})
            for request_id, raw in records.items():
                if hashed.get(request_id) == raw:
                    del hashed[request_id]
            if not hashed and self._alive.get(gateway_id, 0) < time.monotonic():
                self._inflight.pop(gateway_id, None)

    def depth(self) -> int:
        with self._lock:
            return len(self._entries)


_in_process_buffer = InProcessUsageBuffer()


def usage_buffer() -> UsageBuffer:
    if settings.REDIS_URL:
        return RedisUsageBuffer()
    return _in_process_buffer


# --- The gateway's writer ------------------------------------------------------------------------


def new_gateway_id() -> str:
    return f"{socket.gethostname()}:{os.getpid()}:{os.urandom(3).hex()}"


# A final record's write that also does other work in the same Redis script (the request's
# governance finish): given the buffer's ``final_target`` and the record, True once both are
# written, False if it cannot (the recorder then writes the record alone); if it raises, the
# record is written again alone (``apps.gateway.governance.Governance.finish_recorded``).
FinalWrite = Callable[[tuple[str, str, str], bytes], Awaitable[bool]]


class UsageRecorder:
    """Writes one process's records to the buffer. ``commit`` (a final record) and
    ``checkpoint`` (a stream's progress) return once the buffer holds the record, or raise
    ``UsageUnavailable`` after ``USAGE_WRITE_TIMEOUT_S``; what could not be written is kept
    and retried (a newer version of a request's record replaces an older one not yet
    written).

    A waited-for write goes from the request's own coroutine straight to the buffer (no hop
    through the recorder's task): on the pipelined connection the writes of every request in
    one event-loop turn still leave in one system call. Once a write fails, records are held
    and the recorder's task writes them, grouped, retrying, until a write succeeds again."""

    def __init__(self, buffer: UsageBuffer | None = None, gateway_id: str | None = None) -> None:
        self._buffer = buffer or usage_buffer()
        self.gateway_id = gateway_id or new_gateway_id()
        self.timeout_s = settings.USAGE_WRITE_TIMEOUT_S
        self.checkpoint_s = settings.USAGE_CHECKPOINT_INTERVAL_S
        self.ttl_s = settings.USAGE_GATEWAY_TTL_S
        self.alert = settings.USAGE_BACKLOG_ALERT
        self._target = self._buffer.final_target(self.gateway_id)
        self._finals: dict[str, bytes] = {}
        self._checkpoints: dict[str, bytes] = {}
        self._next: asyncio.Future[None] | None = None
        self._wake: asyncio.Event | None = None
        self._failing = False  # a write failed and none succeeded since: hold, let run() retry
        self._alerted_at = 0.0
        self.backlog = 0

    def _enqueue(self) -> asyncio.Future[None]:
        if self._next is None:
            self._next = asyncio.get_running_loop().create_future()
        if self._wake is not None:
            self._wake.set()
        metrics.USAGE_PENDING.set(len(self._finals) + len(self._checkpoints))
        return self._next

    async def _wait(self, future: asyncio.Future[None], since: float | None = None) -> None:
        """Wait for ``future`` up to ``USAGE_WRITE_TIMEOUT_S`` in all (from ``since``)."""
        timeout = self.timeout_s
        if since is not None:
            timeout -= time.monotonic() - since
        try:
            await asyncio.wait_for(asyncio.shield(future), timeout=max(0.0, timeout))
        except TimeoutError:
            raise UsageUnavailable from None

    def _direct_failed(self) -> None:
        self._failing = True
        metrics.USAGE_WRITE_FAILURES.inc()
        logger.warning("could not write a usage record; the recorder retries", exc_info=True)

    def holds(self, request_id: str) -> bool:
        """Whether the request's final record is held, not yet written."""
        return request_id in self._finals

    def forget(self, request_id: str) -> None:
        """Drop the request's held records (another write recorded the request)."""
        self._finals.pop(request_id, None)
        self._checkpoints.pop(request_id, None)
        metrics.USAGE_PENDING.set(len(self._finals) + len(self._checkpoints))

    def record(self, record: UsageRecordData) -> asyncio.Future[None]:
        """Hand a final record over; the future resolves once the buffer holds it."""
        self._checkpoints.pop(record.request_id, None)
        self._finals[record.request_id] = record.to_json()
        return self._enqueue()

    async def commit(self, record: UsageRecordData, write: FinalWrite | None = None) -> None:
        """Write a final record (with ``write``'s other work when it can) and return once the
        buffer holds it."""
        request_id = record.request_id
        if self._failing:
            await self._wait(self.record(record))
            return
        self._checkpoints.pop(request_id, None)  # not sent yet: the final one supersedes it
        raw = record.to_json()
        since = time.monotonic()
        try:
            async with asyncio.timeout(self.timeout_s):
                if write is None or self._target is None or not await write(self._target, raw):
                    await self._buffer.write(
                        gateway_id=self.gateway_id, finals={request_id: raw}, checkpoints={}
                    )
            return
        except (redis.RedisError, OSError, TimeoutError):
            self._direct_failed()
        except asyncio.CancelledError:
            self.record(record)  # maybe not sent: held, the recorder writes it (again)
            raise
        await self._wait(self.record(record), since)

    async def checkpoint(self, record: UsageRecordData, *, wait: bool) -> None:
        if record.request_id in self._finals:
            return
        since = None
        if wait and not self._failing:
            since = time.monotonic()
            try:
                async with asyncio.timeout(self.timeout_s):
                    await self._buffer.write(
                        gateway_id=self.gateway_id,
                        finals={},
                        checkpoints={record.request_id: record.to_json()},
                    )
                return
            except (redis.RedisError, OSError, TimeoutError):
                self._direct_failed()
        self._checkpoints[record.request_id] = record.to_json()
        future = self._enqueue()
        if wait:
            await self._wait(future, since)

    async def flush(self) -> None:
        """Write what is held now, once; raise on failure (it stays held)."""
        if not (self._finals or self._checkpoints):
            if self._next is not None:
                self._next.set_result(None)
                self._next = None
            self._failing = False
            return
        future, self._next = self._next, None
        finals, checkpoints = dict(self._finals), dict(self._checkpoints)
        try:
            await self._buffer.write(
                gateway_id=self.gateway_id, finals=finals, checkpoints=checkpoints
            )
        except BaseException:
            if future is not None:
                if self._next is None:
                    self._next = future
                else:
                    _chain(self._next, future)
            raise
        for held, written in ((self._finals, finals), (self._checkpoints, checkpoints)):
            for request_id, raw in written.items():
                if held.get(request_id) is raw:
                    del held[request_id]
        self._failing = False
        metrics.USAGE_PENDING.set(len(self._finals) + len(self._checkpoints))
        if future is not None and not future.done():
            future.set_result(None)

    async def _heartbeat(self) -> None:
        self.backlog = await self._buffer.heartbeat(gateway_id=self.gateway_id, ttl_s=self.ttl_s)
        metrics.USAGE_BACKLOG.set(self.backlog)
        now = time.monotonic()
        if self.backlog > self.alert and now - self._alerted_at > 60:
            self._alerted_at = now
            logger.warning(
                "usage backlog of %d records (over USAGE_BACKLOG_ALERT=%d): is the worker "
                "flushing?",
                self.backlog,
                self.alert,
            )

    async def run(self) -> None:
        self._wake = asyncio.Event()
        next_beat = 0.0
        while True:
            timeout = max(0.0, next_beat - time.monotonic())
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._wake.wait(), timeout=timeout)
            self._wake.clear()
            try:
                if time.monotonic() >= next_beat:
                    await self._heartbeat()
                    next_beat = time.monotonic() + HEARTBEAT_S
                await self.flush()
            except Exception:
                metrics.USAGE_WRITE_FAILURES.inc()
                logger.warning(
                    "could not write %d usage records; retrying",
                    len(self._finals) + len(self._checkpoints),
                    exc_info=True,
                )
                next_beat = 0.0
                await asyncio.sleep(RETRY_S)

    async def close(self, timeout_s: float = 5.0) -> None:
        """At shutdown: write what is held (retrying up to ``timeout_s``), then retire."""
        deadline = time.monotonic() + timeout_s
        while True:
            try:
                await self.flush()
                break
            except Exception:
                if time.monotonic() >= deadline:
                    logger.error(
                        "shutting down with %d usage records unwritten (their checkpoints "
                        "are billed)",
                        len(self._finals),
                    )
                    return
                await asyncio.sleep(RETRY_S)
        with contextlib.suppress(Exception):
            await self._buffer.retire(gateway_id=self.gateway_id)
        with contextlib.suppress(Exception):
            await self._buffer.aclose()


def _chain(source: asyncio.Future[None], target: asyncio.Future[None]) -> None:
    def done(_: asyncio.Future[None]) -> None:
        if not target.done():
            target.set_result(None)

    source.add_done_callback(done)


# --- Accounting on the response path -------------------------------------------------------------


class AccountedSend:
    """Wraps a request's ASGI ``send`` so that nothing leaves before its usage is written.

    The response start is held until the first body message. A plain answer's final record is
    committed before its body is sent; if the buffer cannot take it in time, the client gets
    503 ``usage_unavailable`` instead (and the record says so, with no completion tokens). A
    stream checkpoints ``req``'s progress before each relayed batch (``build(req, seq)`` makes
    the record); a stream whose checkpoint cannot be written raises ``UsageUnavailable`` to the
    relay, which ends it with an error event. The final empty body commits the final record.
    """

    __slots__ = (
        "_build",
        "_checked",
        "_fuse",
        "_held",
        "_last",
        "_recorder",
        "_send",
        "_unsure",
        "committed",
        "req",
        "seq",
    )

    def __init__(
        self,
        send: Send,
        req: Request,
        recorder: UsageRecorder,
        build: Callable[[Request, int], UsageRecordData],
        fuse: Callable[[Request, tuple[str, str, str], bytes, bool], Awaitable[bool]] | None = None,
    ) -> None:
        self._send = send
        self.req = req
        self._recorder = recorder
        self._build = build
        self._fuse = fuse
        self._held: Message | None = None
        self._last = 0.0
        self._checked = (0, 0)  # the tokens (prompt, completion) of the last checkpoint
        self.seq = 0
        self.committed = False
        # Where the final record's script went when its outcome is unknown (it raised).
        self._unsure: tuple[str, str, str] | None = None

    async def _fused(self, target: tuple[str, str, str], raw: bytes) -> bool:
        assert self._fuse is not None
        try:
            return await self._fuse(self.req, target, raw, False)
        except BaseException:
            self._unsure = target
            raise

    async def commit(self) -> None:
        """Write the request's final record now (with its governance finish when it can)."""
        self.committed = True
        record = self._build(self.req, FINAL_SEQ)
        await self._recorder.commit(record, self._fused if self._fuse is not None else None)

    async def __call__(self, message: Message) -> None:
        kind = message["type"]
        if kind == "http.response.start":
            self._held = message
            return
        if kind != "http.response.body" or self.req.key is None:
            await self._release(message)
            return
        if message.get("more_body", False):
            await self._checkpoint()
            await self._release(message)
            return
        await self._final(message)

    async def _release(self, message: Message) -> None:
        if self._held is not None:
            held, self._held = self._held, None
            await self._send(held)
        await self._send(message)

    async def _checkpoint(self) -> None:
        if self.committed:
            return
        interval = self._recorder.checkpoint_s
        now = time.monotonic()
        if interval > 0 and now - self._last < interval:
            return
        req = self.req
        tokens = (req.prompt_tokens, req.completion_tokens)
        if tokens == self._checked and self.seq:
            # Nothing billable since the last checkpoint: the record it would write bills what
            # the last one did. The first is always written (even at (0, 0): a role-only
            # chunk, or deltas the token count does not see, such as tool calls and
            # reasoning): without it a gateway killed mid-stream leaves no record at all.
            return
        self._checked = tokens
        self._last = now
        self.seq += 1
        await self._recorder.checkpoint(self._build(self.req, self.seq), wait=interval <= 0)

    async def _final(self, message: Message) -> None:
        if self.committed:
            await self._release(message)
            return
        plain = self._held is not None
        try:
            await self.commit()
        except UsageUnavailable:
            if not plain:
                # A stream's tokens already left under their checkpoints; the final record
                # stays held and is written when the buffer is back.
                await self._release(message)
                return
            await self._refuse(message)
            return
        await self._release(message)

    async def _refuse(self, message: Message) -> None:
        """A plain answer whose final record could not be written in time: 503
        ``usage_unavailable``, recorded with no completion tokens, so that what is billed is
        what was delivered. If the answer's own script (record and finish) was sent and its
        outcome is unknown, the refusal goes through the same script first (one more try, at
        most ``REFUSE_PROBE_S``): the finish marker lets only one of the two run. If the
        answer's had run, it is recorded and billed, so it is delivered after all; else the
        refusal is recorded and settled at the prompt's cost. If that try fails too, the 503
        is sent and its record held for the recorder (docs/gateway.md: the one case left)."""
        req = self.req
        answered = (req.status, req.error_code, req.completion_tokens)
        req.status, req.error_code, req.completion_tokens = 503, "usage_unavailable", 0
        refusal = self._build(req, FINAL_SEQ)
        target = self._unsure
        if target is not None and self._fuse is not None and req.ticket is not None:
            if not self._recorder.holds(req.request_id):
                # The recorder wrote the answer's record alone meanwhile: it is billed.
                req.status, req.error_code, req.completion_tokens = answered
                await self._release(message)
                return
            refused: bool | None = None
            try:
                async with asyncio.timeout(min(REFUSE_PROBE_S, self._recorder.timeout_s)):
                    refused = await self._fuse(req, target, refusal.to_json(), True)
            except (redis.RedisError, OSError, TimeoutError):
                logger.warning("could not write the refusal of %s", req.request_id, exc_info=True)
            if refused is not None:
                self._recorder.forget(req.request_id)
                if not refused:
                    req.status, req.error_code, req.completion_tokens = answered
                    await self._release(message)
                    return
                await self._send_refusal()
                return
        self._recorder.record(refusal)
        await self._send_refusal()

    async def _send_refusal(self) -> None:
        req = self.req
        error = GatewayError("usage_unavailable", "Usage could not be recorded; retry later.")
        body = error.body()
        self._held = None
        await self._send(
            {
                "type": "http.response.start",
                "status": 503,
                "headers": [
                    (b"content-type", b"application/json"),
                    (b"content-length", str(len(body)).encode()),
                    (b"x-request-id", req.request_id.encode()),
                ],
            }
        )
        await self._send({"type": "http.response.body", "body": body})

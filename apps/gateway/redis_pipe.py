"""The gateway's hot-path Redis client: one connection per process and event loop, every
command pipelined on it.

Why not redis-py's asyncio client there: it takes a pooled connection per command (a request
in flight holds one while it waits, so concurrency needs as many connections, and past the
pool's size it raises ``MaxConnectionsError``), writes each command with its own system call
and wakes its caller through several layers; measured on the gateway's benchmark it was the
largest single cost of a governed request (``bench/gateway.py --profile``). Here, the commands
of every request in flight are appended to one buffer and written together once per event-loop
turn; replies come back in order and resolve their futures first in, first out.

Guarantees:

* Commands of one ``transaction`` (``MULTI`` … ``EXEC``) are written contiguously, so no other
  command of this connection comes between them; the result is ``EXEC``'s, and a failed
  command inside it raises ``redis.ResponseError``.
* ``evalsha`` runs a script by its digest and falls back to ``EVAL`` once if Redis does not
  know it (a restarted or flushed Redis).
* A lost connection fails every command waiting on it with ``redis.ConnectionError``; a reply
  that takes longer than ``reply_timeout_s`` fails them with ``redis.TimeoutError`` and closes
  the connection (a stalled Redis). The next command connects again (within
  ``connect_timeout_s``). Nothing is retried here: callers decide (the usage recorder keeps and
  rewrites what it holds).
* ``redis://`` and ``rediss://`` URLs, with a password (``AUTH``) and a database (``SELECT``).
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import ssl
import time
import weakref
from collections import deque
from typing import Any, cast
from urllib.parse import unquote, urlparse

import redis

__all__ = ["RedisPipe", "Script", "shared_pipe"]

_CRLF = b"\r\n"


class Script:
    """A Lua script and its digest."""

    __slots__ = ("sha", "source")

    def __init__(self, source: str) -> None:
        self.source = source
        # Redis names scripts by their SHA-1 (EVALSHA); not a security use.
        self.sha = hashlib.sha1(source.encode(), usedforsecurity=False).hexdigest()


def _encode(args: tuple[Any, ...]) -> bytes:
    return b"*%d\r\n%s" % (len(args), encode_bulk(args))


def encode_bulk(args: tuple[Any, ...] | list[Any]) -> bytes:
    """``args`` as RESP bulk strings, without the array header (``evalsha`` takes keys encoded
    once this way)."""
    out = []
    for arg in args:
        if isinstance(arg, bytes):
            data = arg
        elif isinstance(arg, str):
            data = arg.encode()
        elif isinstance(arg, (int, float)) and not isinstance(arg, bool):
            data = repr(arg).encode()
        else:
            raise TypeError(f"cannot send {type(arg).__name__} to Redis")
        out.append(b"$%d\r\n%s\r\n" % (len(data), data))
    return b"".join(out)


class _Incomplete(Exception):
    pass


def _parse(buf: bytearray, pos: int) -> tuple[Any, int]:
    """One reply from ``buf`` at ``pos``: (value, next position); errors are returned as
    ``redis.ResponseError`` values. Raises ``_Incomplete`` when more bytes are needed."""
    end = buf.find(_CRLF, pos)
    if end < 0:
        raise _Incomplete
    kind, line = buf[pos], bytes(buf[pos + 1 : end])
    pos = end + 2
    if kind == 43:  # + simple string
        return line, pos
    if kind == 58:  # : integer
        return int(line), pos
    if kind == 36:  # $ bulk string
        size = int(line)
        if size < 0:
            return None, pos
        if len(buf) < pos + size + 2:
            raise _Incomplete
        return bytes(buf[pos : pos + size]), pos + size + 2
    if kind == 42:  # * array
        count = int(line)
        if count < 0:
            return None, pos
        items = []
        for _ in range(count):
            item, pos = _parse(buf, pos)
            items.append(item)
        return items, pos
    if kind == 45:  # - error
        return redis.ResponseError(line.decode(errors="replace")), pos
    raise redis.ConnectionError(f"unexpected reply byte {kind!r} from Redis")


class _Waiter:
    """One command, or one transaction (``replies`` > 1: the last, EXEC's, is its result)."""

    __slots__ = ("future", "replies", "sent_at", "transaction")

    def __init__(self, future: asyncio.Future[Any], replies: int, transaction: bool) -> None:
        self.future = future
        self.replies = replies
        self.transaction = transaction
        self.sent_at = time.monotonic()


class _Protocol(asyncio.Protocol):
    def __init__(self, pipe: RedisPipe) -> None:
        self.pipe = pipe
        self.buf = bytearray()
        self.transport: asyncio.Transport | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        # uvloop's transports implement asyncio.Transport without subclassing it.
        self.transport = cast("asyncio.Transport", transport)

    def data_received(self, data: bytes) -> None:
        buf = self.buf
        buf += data
        pos = 0
        pipe = self.pipe
        try:
            while pos < len(buf):
                try:
                    value, pos = _parse(buf, pos)
                except _Incomplete:
                    break
                pipe._reply(self, value)
        except redis.ConnectionError as exc:
            pipe._lost(self, exc)
            return
        if pos:
            del buf[:pos]

    def connection_lost(self, exc: Exception | None) -> None:
        self.pipe._lost(self, redis.ConnectionError(f"Redis connection lost: {exc or 'closed'}"))


class RedisPipe:
    """See the module docstring. Use it from one event loop only."""

    def __init__(
        self, url: str, *, connect_timeout_s: float = 2.0, reply_timeout_s: float = 5.0
    ) -> None:
        parsed = urlparse(url)
        if parsed.scheme not in ("redis", "rediss"):
            raise ValueError(f"unsupported Redis URL scheme {parsed.scheme!r}")
        self._host = parsed.hostname or "127.0.0.1"
        self._port = parsed.port or 6379
        self._ssl = ssl.create_default_context() if parsed.scheme == "rediss" else None
        self._username = unquote(parsed.username) if parsed.username else None
        self._password = unquote(parsed.password) if parsed.password else None
        path = parsed.path.lstrip("/")
        self._db = int(path) if path else 0
        self.connect_timeout_s = connect_timeout_s
        self.reply_timeout_s = reply_timeout_s
        self._proto: _Protocol | None = None
        self._connecting: asyncio.Future[_Protocol] | None = None
        self._waiters: deque[_Waiter] = deque()
        self._current: list[Any] = []  # replies gathered for the transaction at the head
        self._out: list[bytes] = []
        self._flush_scheduled = False
        self._watchdog: asyncio.TimerHandle | None = None
        self.connections = 0  # connections made so far (tests, metrics)

    # --- public ----------------------------------------------------------------------------
    async def execute(self, *args: Any) -> Any:
        proto = await self._connected()
        return await self._send(proto, _encode(args), 1, False)

    async def transaction(self, commands: list[tuple[Any, ...]]) -> list[Any]:
        """``MULTI``, the commands, ``EXEC``, written together; EXEC's replies."""
        proto = await self._connected()
        data = b"".join([_encode(("MULTI",)), *(_encode(c) for c in commands), _encode(("EXEC",))])
        result: list[Any] = await self._send(proto, data, len(commands) + 2, True)
        return result

    async def evalsha(
        self, script: Script, keys: list[str] | tuple[int, bytes], args: list[Any]
    ) -> Any:
        """Run ``script`` (``EVAL`` once if Redis does not know it). ``keys``: a list, or
        ``(count, encode_bulk(keys))`` made once for keys used again and again."""
        if isinstance(keys, list):
            keys = (len(keys), encode_bulk(keys))
        count, blob = keys
        tail = b"$%d\r\n%d\r\n%s%s" % (len(str(count)), count, blob, encode_bulk(args))
        size = 3 + count + len(args)
        head = b"*%d\r\n$7\r\nEVALSHA\r\n$40\r\n%s\r\n" % (size, script.sha.encode())
        proto = await self._connected()
        try:
            return await self._send(proto, head + tail, 1, False)
        except redis.ResponseError as exc:
            if not str(exc).startswith("NOSCRIPT"):
                raise
        source = script.source.encode()
        head = b"*%d\r\n$4\r\nEVAL\r\n$%d\r\n%s\r\n" % (size, len(source), source)
        proto = await self._connected()
        return await self._send(proto, head + tail, 1, False)

    async def aclose(self) -> None:
        proto, self._proto = self._proto, None
        if proto is not None and proto.transport is not None:
            proto.transport.close()
        self._fail(redis.ConnectionError("the Redis client was closed"))

    # --- connection ------------------------------------------------------------------------
    async def _connected(self) -> _Protocol:
        proto = self._proto
        if proto is not None:
            return proto
        if self._connecting is None:
            self._connecting = asyncio.ensure_future(self._connect())
        connecting = self._connecting
        try:
            return await asyncio.shield(connecting)
        finally:
            if connecting.done() and self._connecting is connecting:
                self._connecting = None

    async def _connect(self) -> _Protocol:
        loop = asyncio.get_running_loop()
        try:
            async with asyncio.timeout(self.connect_timeout_s):
                _, proto = await loop.create_connection(
                    lambda: _Protocol(self), self._host, self._port, ssl=self._ssl
                )
                self._proto = proto
                self.connections += 1
                if self._password is not None:
                    auth = (self._username, self._password) if self._username else (self._password,)
                    await self._send(proto, _encode(("AUTH", *auth)), 1, False)
                if self._db:
                    await self._send(proto, _encode(("SELECT", self._db)), 1, False)
        except (OSError, TimeoutError) as exc:
            # A connection made but not ready (AUTH or SELECT too slow): close it and fail what
            # was sent on it, or their replies would be read as the next connection's.
            error = redis.ConnectionError(
                f"cannot connect to Redis at {self._host}:{self._port}: {exc}"
            )
            self._abandon()
            self._fail(error)
            raise error from None
        except BaseException:
            self._abandon()
            self._fail(redis.ConnectionError("the connection to Redis was abandoned"))
            raise
        return proto

    def _abandon(self) -> None:
        proto, self._proto = self._proto, None
        if proto is not None and proto.transport is not None:
            proto.transport.close()

    # --- sending and receiving -------------------------------------------------------------
    def _send(
        self, proto: _Protocol, data: bytes, replies: int, transaction: bool
    ) -> asyncio.Future[Any]:
        future: asyncio.Future[Any] = asyncio.get_running_loop().create_future()
        self._waiters.append(_Waiter(future, replies, transaction))
        self._out.append(data)
        if not self._flush_scheduled:
            self._flush_scheduled = True
            asyncio.get_running_loop().call_soon(self._flush)
        if self._watchdog is None:
            self._arm()
        return future

    def _flush(self) -> None:
        self._flush_scheduled = False
        out, self._out = self._out, []
        proto = self._proto
        if proto is not None and proto.transport is not None and out:
            proto.transport.write(b"".join(out))

    def _reply(self, proto: _Protocol, value: Any) -> None:
        if proto is not self._proto or not self._waiters:
            return
        waiter = self._waiters[0]
        if waiter.replies > 1:
            self._current.append(value)
            if len(self._current) < waiter.replies:
                return
            value = self._result(self._current)
            self._current = []
        self._waiters.popleft()
        if not waiter.future.done():
            if isinstance(value, Exception):
                waiter.future.set_exception(value)
            else:
                waiter.future.set_result(value)

    @staticmethod
    def _result(replies: list[Any]) -> Any:
        """A transaction's result: EXEC's array, or the first error."""
        for value in replies[:-1]:
            if isinstance(value, Exception):
                return value
        final = replies[-1]
        if isinstance(final, Exception):
            return final
        if final is None:
            return redis.ResponseError("EXEC aborted")
        for value in final:
            if isinstance(value, Exception):
                return value
        return final

    def _lost(self, proto: _Protocol, exc: Exception) -> None:
        if proto is not self._proto:
            return
        self._proto = None
        if proto.transport is not None:
            proto.transport.close()
        self._fail(exc)

    def _fail(self, exc: Exception) -> None:
        waiters, self._waiters = self._waiters, deque()
        self._current = []
        self._out = []
        for waiter in waiters:
            if not waiter.future.done():
                waiter.future.set_exception(exc)
                waiter.future.exception()  # retrieved: no warning if its caller left
        if self._watchdog is not None:
            self._watchdog.cancel()
            self._watchdog = None

    # --- the reply deadline ------------------------------------------------------------------
    def _arm(self) -> None:
        self._watchdog = asyncio.get_running_loop().call_later(self.reply_timeout_s, self._check)

    def _check(self) -> None:
        self._watchdog = None
        if not self._waiters:
            return
        late = time.monotonic() - self._waiters[0].sent_at
        if late >= self.reply_timeout_s:
            error = redis.TimeoutError("Redis did not answer in time")
            proto = self._proto
            if proto is not None:
                self._lost(proto, error)
            else:  # no connection to close, but its commands must not wait for ever
                self._fail(error)
            return
        self._watchdog = asyncio.get_running_loop().call_later(
            self.reply_timeout_s - late, self._check
        )


_pipes: weakref.WeakKeyDictionary[asyncio.AbstractEventLoop, dict[str, RedisPipe]] = (
    weakref.WeakKeyDictionary()
)


def shared_pipe(url: str) -> RedisPipe:
    """This event loop's pipe to ``url`` (the gateway's governance and usage share it)."""
    loop = asyncio.get_running_loop()
    pipes = _pipes.setdefault(loop, {})
    pipe = pipes.get(url)
    if pipe is None:
        pipe = pipes[url] = RedisPipe(url)
    return pipe


async def close_shared() -> None:
    """Close this event loop's pipes (the gateway's shutdown)."""
    with contextlib.suppress(RuntimeError):
        for pipe in _pipes.pop(asyncio.get_running_loop(), {}).values():
            await pipe.aclose()

"""The sealed data plane's front: the agent's authenticated TLS endpoint before its engine.

With ``EngineSpec.sealed`` the engine binds 127.0.0.1 on a port the agent picks and this front
serves the instance's address (``spec.host:spec.port``) instead, in the agent's own process
(uvicorn on the agent's event loop, its signals left to the agent). Guarantees:

* TLS only, with the agent's certificate (``agent.tls_identity``), whose fingerprint the
  gateways pin; TLS 1.2 at least.
* Every request must carry ``Authorization: Bearer <engine secret>`` (compared in constant
  time) before anything else is looked at: missing or wrong is 401 ``invalid_api_key`` in the
  OpenAI-shaped envelope, whatever the path.
* Only the inference paths the gateway calls and the health check are forwarded
  (:data:`FORWARDED`); anything else, ``/metrics`` included (the agent scrapes it on loopback
  for its heartbeats), is 404 ``not_found`` and never reaches the engine.
* Request bodies are read whole (bounded by :data:`MAX_BODY_BYTES`: 413 beyond) and sent to
  the engine with their head in one write, on a pooled keep-alive connection (HTTP/1.1, parsed
  with httptools: httpx cost 5-10x more CPU per request here); answers are relayed as each read
  returns them, never buffered, so a stream's tokens pass at once. A client that disconnects
  closes the engine's connection (the engine stops generating).
* The engine unreachable, or closing before an answer: 502 ``upstream_unreachable`` (the gateway
  then fails over); an idle connection the engine had closed is retried once on a new one.
"""

from __future__ import annotations

import asyncio
import contextlib
import hmac
import logging
import socket
from collections.abc import Awaitable, Callable, MutableMapping
from typing import Any

import httptools
import orjson
import uvicorn

from agent.tls_identity import TlsIdentity

log = logging.getLogger(__name__)

Scope = MutableMapping[str, Any]
Message = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]

FORWARDED: frozenset[tuple[str, str]] = frozenset(
    {
        ("POST", "/v1/chat/completions"),
        ("POST", "/v1/completions"),
        ("POST", "/v1/embeddings"),
        ("POST", "/v1/responses"),
        ("POST", "/v1/rerank"),
        ("POST", "/v1/score"),
        ("POST", "/tokenize"),
        ("POST", "/detokenize"),
        ("GET", "/v1/models"),
        ("GET", "/health"),
    }
)
MAX_BODY_BYTES = 64 * 1024 * 1024
# Not passed on in either direction (RFC 9110 7.6.1), and Host/Content-Length, which httpx and
# uvicorn set for the hop they make.
_HOP = frozenset(
    {
        b"connection",
        b"keep-alive",
        b"proxy-connection",
        b"proxy-authenticate",
        b"proxy-authorization",
        b"te",
        b"trailer",
        b"transfer-encoding",
        b"upgrade",
        b"host",
        b"content-length",
    }
)
_JSON = [(b"content-type", b"application/json")]
CONNECT_TIMEOUT_S = 5.0
READ_SIZE = 256 * 1024


def _error(status: int, code: str, message: str) -> bytes:
    kind = "invalid_request_error" if status < 500 else "server_error"
    return orjson.dumps({"error": {"message": message, "type": kind, "param": None, "code": code}})


async def _respond(send: Send, status: int, body: bytes) -> None:
    headers = [*_JSON, (b"content-length", str(len(body)).encode())]
    await send({"type": "http.response.start", "status": status, "headers": headers})
    await send({"type": "http.response.body", "body": body})


class _Parsed:
    """httptools callbacks for one response: the head, then body pieces as they come."""

    def __init__(self) -> None:
        self.headers: list[tuple[bytes, bytes]] = []
        self.head_done = False
        self.done = False
        self.pieces: list[bytes] = []

    def on_header(self, name: bytes, value: bytes) -> None:
        self.headers.append((name.lower(), value))

    def on_headers_complete(self) -> None:
        self.head_done = True

    def on_body(self, body: bytes) -> None:
        self.pieces.append(body)

    def on_message_complete(self) -> None:
        self.done = True


class _Connection:
    """One keep-alive HTTP/1.1 connection to the engine on loopback."""

    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.reader, self.writer = reader, writer

    def close(self) -> None:
        self.writer.close()


class _Pool:
    """Idle connections to the engine, most recent first; no bound (the gateway bounds its
    own). A connection goes back only after a complete answer that keeps it alive."""

    def __init__(self, port: int) -> None:
        self.port = port
        self.idle: list[_Connection] = []

    async def acquire(self) -> tuple[_Connection, bool]:
        """``(connection, reused)``."""
        while self.idle:
            conn = self.idle.pop()
            if not conn.writer.is_closing() and not conn.reader.at_eof():
                return conn, True
            conn.close()
        reader, writer = await asyncio.wait_for(
            asyncio.open_connection("127.0.0.1", self.port), CONNECT_TIMEOUT_S
        )
        sock = writer.get_extra_info("socket")
        if sock is not None:
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        return _Connection(reader, writer), False

    def release(self, conn: _Connection) -> None:
        self.idle.append(conn)

    def close(self) -> None:
        for conn in self.idle:
            conn.close()
        self.idle.clear()


class _EngineGone(Exception):
    """The engine closed or refused the connection before answering."""


class FrontApp:
    """The ASGI application of the front: check, forward, relay."""

    def __init__(self, api_key: str, upstream_port: int) -> None:
        self._auth = b"Bearer " + api_key.encode()
        self._pool = _Pool(upstream_port)

    @property
    def upstream_port(self) -> int:
        return self._pool.port

    def retarget(self, upstream_port: int) -> None:
        """Forward to the engine on ``127.0.0.1:upstream_port`` (a restarted engine's port)."""
        old, self._pool = self._pool, _Pool(upstream_port)
        old.close()

    async def aclose(self) -> None:
        self._pool.close()

    def _authorized(self, headers: list[tuple[bytes, bytes]]) -> bool:
        for name, value in headers:
            if name == b"authorization":
                return hmac.compare_digest(value, self._auth)
        return False

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            return
        headers: list[tuple[bytes, bytes]] = scope["headers"]
        if not self._authorized(headers):
            await _respond(send, 401, _error(401, "invalid_api_key", "Incorrect engine secret."))
            return
        method, path = scope["method"], scope["path"]
        if (method, path) not in FORWARDED:
            await _respond(send, 404, _error(404, "not_found", "Not served here."))
            return
        chunks: list[bytes] = []
        size = 0
        while True:
            message = await receive()
            if message["type"] == "http.disconnect":
                return
            chunk = message.get("body", b"")
            size += len(chunk)
            if size > MAX_BODY_BYTES:
                await _respond(send, 413, _error(413, "request_too_large", "Body too large."))
                return
            chunks.append(chunk)
            if not message.get("more_body", False):
                break
        await self._forward(scope, receive, send, headers, b"".join(chunks))

    def _request(self, scope: Scope, headers: list[tuple[bytes, bytes]], body: bytes) -> bytes:
        """The request for the engine, head and body in one write."""
        target = scope["path"].encode()
        query: bytes = scope.get("query_string", b"")
        if query:
            target += b"?" + query
        lines = [scope["method"].encode() + b" " + target + b" HTTP/1.1"]
        lines.append(b"host: 127.0.0.1:%d" % self._pool.port)
        lines += [k + b": " + v for k, v in headers if k not in _HOP]
        lines.append(b"content-length: %d" % len(body))
        return b"\r\n".join(lines) + b"\r\n\r\n" + body

    async def _forward(
        self,
        scope: Scope,
        receive: Receive,
        send: Send,
        headers: list[tuple[bytes, bytes]],
        body: bytes,
    ) -> None:
        request = self._request(scope, headers, body)
        relay = asyncio.ensure_future(self._exchange(send, request))
        gone = asyncio.ensure_future(self._disconnected(receive))
        try:
            await asyncio.wait({relay, gone}, return_when=asyncio.FIRST_COMPLETED)
        finally:
            gone.cancel()
            if not relay.done():  # the client left: the engine's connection is closed
                relay.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await relay

    async def _exchange(self, send: Send, request: bytes) -> None:
        """Send ``request`` and relay the answer; a reused connection the engine had closed
        (nothing read back) is retried once on a new one."""
        for _ in range(2):
            try:
                conn, reused = await self._pool.acquire()
            except (OSError, TimeoutError) as exc:
                log.warning("front: engine unreachable: %s", type(exc).__name__)
                break
            try:
                if await self._relay(send, conn, request):
                    self._pool.release(conn)
                else:
                    conn.close()
                return
            except _EngineGone:
                conn.close()
                if not reused:
                    break
            except BaseException:
                conn.close()
                raise
        await _respond(send, 502, _error(502, "upstream_unreachable", "The engine is unreachable."))

    @staticmethod
    async def _relay(send: Send, conn: _Connection, request: bytes) -> bool:
        """Relay one answer as it is read; True when the connection may be reused. Raises
        ``_EngineGone`` when the engine answered nothing at all."""
        parsed = _Parsed()
        parser = httptools.HttpResponseParser(parsed)
        try:
            conn.writer.write(request)
            await conn.writer.drain()
        except OSError:
            raise _EngineGone from None
        started = False
        while not parsed.done:
            try:
                data = await conn.reader.read(READ_SIZE)
            except OSError:
                data = b""
            if not data:
                if not started:
                    raise _EngineGone
                log.warning("front: the engine broke off an answer")
                await send({"type": "http.response.body", "body": b"", "more_body": False})
                return False
            try:
                parser.feed_data(data)
            except httptools.HttpParserError:
                if not started:
                    raise _EngineGone from None
                await send({"type": "http.response.body", "body": b"", "more_body": False})
                return False
            if parsed.head_done and not started:
                started = True
                out = [(k, v) for k, v in parsed.headers if k not in _HOP or k == b"content-length"]
                status = parser.get_status_code()
                await send({"type": "http.response.start", "status": status, "headers": out})
            if started and parsed.pieces:
                piece = b"".join(parsed.pieces)
                parsed.pieces.clear()
                await send({"type": "http.response.body", "body": piece, "more_body": True})
        await send({"type": "http.response.body", "body": b"", "more_body": False})
        return parser.should_keep_alive()

    @staticmethod
    async def _disconnected(receive: Receive) -> None:
        while (await receive())["type"] != "http.disconnect":
            pass


class _Server(uvicorn.Server):
    """uvicorn without its signal handlers: the agent's own handle SIGTERM and SIGINT."""

    @contextlib.contextmanager
    def capture_signals(self) -> Any:
        yield


def loopback_port() -> int:
    """A free TCP port on 127.0.0.1 for the engine (free when asked; the engine binds it)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def _listen(host: str, port: int) -> socket.socket:
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        # Accepted connections inherit it (Linux): uvicorn writes a response's head and body
        # as two TLS records, and Nagle would hold the second for the peer's delayed ACK
        # (40 ms per answer).
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        sock.bind((host, port))
        sock.listen(1024)
    except OSError:
        sock.close()
        raise
    sock.setblocking(False)
    return sock


class EngineFront:
    """One front, bound to ``host:port``; :meth:`start` raises ``OSError`` if it cannot bind."""

    def __init__(
        self, *, host: str, port: int, api_key: str, upstream_port: int, tls: TlsIdentity
    ) -> None:
        self.host, self.port, self.tls = host, port, tls
        self.app = FrontApp(api_key, upstream_port)
        self._server: _Server | None = None
        self._task: asyncio.Task[None] | None = None

    async def start(self) -> None:
        sock = _listen(self.host, self.port)
        config = uvicorn.Config(
            self.app,
            loop="none",
            http="httptools",
            lifespan="off",
            access_log=False,
            log_level="warning",
            server_header=False,
            date_header=False,
            ssl_certfile=str(self.tls.cert_path),
            ssl_keyfile=str(self.tls.key_path),
            timeout_keep_alive=30,
            timeout_graceful_shutdown=2,
            # The port is reachable from the operator's CIDRs: bound what strangers can hold
            # open (503 beyond; the gateways keep far fewer connections per process).
            limit_concurrency=4096,
        )
        self._server = _Server(config)
        self._task = asyncio.create_task(self._server.serve(sockets=[sock]), name="engine-front")
        # uvicorn says it is listening by a flag only (no event to wait on).
        while not self._server.started and not self._task.done():  # noqa: ASYNC110
            await asyncio.sleep(0.01)
        if self._task.done():
            sock.close()
            self._task.result()  # its error, if any
            raise OSError(f"the front on {self.host}:{self.port} did not start")
        log.info("sealed front listening on https://%s:%d", self.host, self.port)

    async def stop(self) -> None:
        """Stop accepting, let answers in flight finish (2 s at most), close the engine pool."""
        if self._server is not None and self._task is not None:
            self._server.should_exit = True
            with contextlib.suppress(asyncio.CancelledError, SystemExit):
                await self._task
        self._server = self._task = None
        await self.app.aclose()

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
* Request bodies are read whole (bounded by :data:`MAX_BODY_BYTES`: 413 beyond); answers are
  relayed chunk by chunk as the engine writes them, never buffered, so a stream's tokens pass at
  once. A client that disconnects closes the engine's connection (the engine stops generating).
* The engine unreachable: 502 ``upstream_unreachable`` (the gateway then fails over).
"""

from __future__ import annotations

import asyncio
import contextlib
import hmac
import logging
import socket
from collections.abc import Awaitable, Callable, MutableMapping
from typing import Any

import httpx
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
UPSTREAM_TIMEOUT = httpx.Timeout(connect=5.0, read=None, write=30.0, pool=None)


def _error(status: int, code: str, message: str) -> bytes:
    kind = "invalid_request_error" if status < 500 else "server_error"
    return orjson.dumps({"error": {"message": message, "type": kind, "param": None, "code": code}})


async def _respond(send: Send, status: int, body: bytes) -> None:
    headers = [*_JSON, (b"content-length", str(len(body)).encode())]
    await send({"type": "http.response.start", "status": status, "headers": headers})
    await send({"type": "http.response.body", "body": body})


class FrontApp:
    """The ASGI application of the front: check, forward, relay."""

    def __init__(self, api_key: str, upstream_port: int) -> None:
        self._auth = b"Bearer " + api_key.encode()
        self._client: httpx.AsyncClient | None = None
        self.retarget(upstream_port)

    def retarget(self, upstream_port: int) -> None:
        """Forward to the engine on ``127.0.0.1:upstream_port`` (a restarted engine's port)."""
        old = self._client
        self.upstream_port = upstream_port
        self._client = httpx.AsyncClient(
            base_url=f"http://127.0.0.1:{upstream_port}",
            timeout=UPSTREAM_TIMEOUT,
            limits=httpx.Limits(max_connections=None, max_keepalive_connections=512),
            trust_env=False,
        )
        if old is not None:
            asyncio.get_event_loop().create_task(old.aclose())

    async def aclose(self) -> None:
        if self._client is not None:
            await self._client.aclose()

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

    async def _forward(
        self,
        scope: Scope,
        receive: Receive,
        send: Send,
        headers: list[tuple[bytes, bytes]],
        body: bytes,
    ) -> None:
        client = self._client
        assert client is not None
        query: bytes = scope.get("query_string", b"")
        url = scope["path"] + ("?" + query.decode("latin-1") if query else "")
        forwarded = [(k, v) for k, v in headers if k not in _HOP]
        request = client.build_request(scope["method"], url, headers=forwarded, content=body)
        try:
            response = await client.send(request, stream=True)
        except httpx.HTTPError as exc:
            log.warning("front: engine unreachable: %s", type(exc).__name__)
            await _respond(
                send, 502, _error(502, "upstream_unreachable", "The engine is unreachable.")
            )
            return
        relay = asyncio.ensure_future(self._relay(send, response))
        gone = asyncio.ensure_future(self._disconnected(receive))
        try:
            await asyncio.wait({relay, gone}, return_when=asyncio.FIRST_COMPLETED)
        finally:
            gone.cancel()
            if not relay.done():  # the client left: stop reading, the engine sees it go
                relay.cancel()
            with contextlib.suppress(asyncio.CancelledError, httpx.HTTPError, OSError):
                await relay
            await response.aclose()

    @staticmethod
    async def _disconnected(receive: Receive) -> None:
        while (await receive())["type"] != "http.disconnect":
            pass

    @staticmethod
    async def _relay(send: Send, response: httpx.Response) -> None:
        out = [(k.lower(), v) for k, v in response.headers.raw if k.lower() not in _HOP]
        length = response.headers.get("content-length")
        if length is not None:
            out.append((b"content-length", length.encode()))
        await send({"type": "http.response.start", "status": response.status_code, "headers": out})
        try:
            async for chunk in response.aiter_raw():
                await send({"type": "http.response.body", "body": chunk, "more_body": True})
        except httpx.HTTPError as exc:  # the engine broke off: end the answer where it stopped
            log.warning("front: engine stream broken: %s", type(exc).__name__)
        await send({"type": "http.response.body", "body": b"", "more_body": False})


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

"""The OpenAI-compatible gateway as a raw ASGI application (the seed's Router, data plane).

Hot path, per request: parse headers once; authenticate against the in-memory key cache (keyed
hash, constant-time compare; the database only on a cache miss); read the body with a size cap;
look the model code up in the in-memory routing table; check the key's rate limits (one Redis
script call, only for keys that have limits); pick an instance by the model code's policy; call
the engine through the process's one pooled client; pass the answer through (SSE chunk by
chunk); hand the usage record to a batched buffer. No Django request machinery, no ORM.

Background tasks per process: the event listener (groups ``instances`` and ``keys``), the
periodic refreshes, and the usage batcher. They start on the first request (or at lifespan
startup when run standalone).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import math
import os
import time
from collections.abc import Awaitable, Callable, MutableMapping
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import aiohttp
import orjson
from django.conf import settings
from redis.exceptions import TimeoutError as RedisTimeout

from apps.gateway import metrics
from apps.gateway.auth import KeyCache
from apps.gateway.backends import Limits, rate_limiter
from apps.gateway.routing import (
    PREFIX_AWARE,
    SESSION_AFFINITY,
    InstanceState,
    ModelRoute,
    RetryBudget,
    RoutingTable,
)
from apps.gateway.state import Directory
from apps.gateway.types import KeySnapshot
from apps.gateway.usage import UsageRecorder

logger = logging.getLogger("apps.gateway")

Scope = MutableMapping[str, Any]
Message = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]

ENDPOINTS = {
    "/v1/chat/completions": "chat",
    "/v1/completions": "completions",
    "/v1/embeddings": "embeddings",
}
_JSON = b"application/json"
_SSE_HEADERS = [(b"content-type", b"text/event-stream"), (b"cache-control", b"no-cache")]
_OVERHEAD = b"x-gateway-overhead-ms"
_DONE = b"data: [DONE]"
_USAGE_NULL = b',"usage":null'
_USAGE_OBJ = b'"usage":{'
_INJECT = b'{"stream_options":{"include_usage":true},'


class GatewayError(Exception):
    """A refusal in OpenAI's envelope."""

    def __init__(
        self,
        status: int,
        message: str,
        code: str,
        *,
        type: str = "invalid_request_error",
        param: str | None = None,
        headers: list[tuple[bytes, bytes]] | None = None,
    ) -> None:
        super().__init__(message)
        self.status, self.message, self.code, self.type = status, message, code, type
        self.param, self.headers = param, headers or []

    def body(self) -> bytes:
        error = {"message": self.message, "type": self.type, "param": self.param, "code": self.code}
        return orjson.dumps({"error": error})


def _unauthorized() -> GatewayError:
    # One body for a missing, unknown, wrong, revoked or expired key: nothing to probe.
    return GatewayError(401, "Incorrect API key provided.", "invalid_api_key")


def _retry_after(seconds: float) -> list[tuple[bytes, bytes]]:
    return [(b"retry-after", str(max(1, math.ceil(seconds))).encode())]


class _Upstream(Exception):
    """An engine call that failed; ``retryable`` when no byte reached the client and the engine
    did not start working on the request (connection failure) or answered 5xx."""

    def __init__(self, status: int, code: str, kind: str, message: str) -> None:
        super().__init__(message)
        self.status, self.code, self.kind, self.message = status, code, kind, message


class Request:
    """What one request accumulates; ends up as its usage record."""

    __slots__ = (
        "attempts",
        "completion_tokens",
        "endpoint",
        "error_code",
        "instance",
        "key",
        "limited",
        "model_name",
        "overhead_s",
        "prompt_tokens",
        "request_id",
        "route",
        "start",
        "status",
        "stream",
        "ttft",
        "upstream_s",
    )

    def __init__(self, start: float, request_id: str, endpoint: str) -> None:
        self.start = start
        self.request_id = request_id
        self.endpoint = endpoint
        self.key: KeySnapshot | None = None
        self.route: ModelRoute | None = None
        self.instance: InstanceState | None = None
        self.stream = False
        self.status = 200
        self.error_code = ""
        self.prompt_tokens = 0
        self.completion_tokens = 0
        self.attempts = 0
        self.ttft: float | None = None
        self.model_name = ""
        self.upstream_s = 0.0
        self.limited = False
        self.overhead_s = 0.0

    def overhead_header(self) -> tuple[bytes, bytes]:
        overhead = self.overhead_s = time.perf_counter() - self.start - self.upstream_s
        return (_OVERHEAD, f"{overhead * 1000:.3f}".encode())


class Gateway:
    """The ASGI callable; one per process."""

    def __init__(self) -> None:
        self.max_body = settings.GATEWAY_MAX_BODY_BYTES
        self.max_attempts = settings.GATEWAY_MAX_ATTEMPTS
        self.capacity_wait_s = settings.GATEWAY_CAPACITY_WAIT_S
        self.retry_after_s = settings.GATEWAY_RETRY_AFTER_S
        self.session_header = settings.GATEWAY_SESSION_HEADER.encode()
        self.prefix_chars = settings.GATEWAY_PREFIX_CHARS
        self.drain_s = settings.GATEWAY_DISCONNECT_DRAIN_S
        self.metrics_token = settings.GATEWAY_METRICS_TOKEN
        self.table = RoutingTable(
            breaker_failures=settings.GATEWAY_BREAKER_FAILURES,
            breaker_cooldown_s=settings.GATEWAY_BREAKER_COOLDOWN_S,
            load_factor=settings.GATEWAY_PREFIX_LOAD_FACTOR,
        )
        self.budget = RetryBudget(settings.GATEWAY_RETRY_BUDGET_RATIO)
        self._executor = ThreadPoolExecutor(max_workers=4, thread_name_prefix="gateway-db")
        self.keys = KeyCache(self._executor)
        self.directory = Directory(self.table, self._executor)
        self.usage = UsageRecorder()
        self.limiter: Any = None
        self.client: aiohttp.ClientSession | None = None
        self._started = False
        self._start_lock: asyncio.Lock | None = None
        self._tasks: list[asyncio.Task[None]] = []
        self._ids = 0
        self._id_prefix = os.urandom(6).hex()

    # --- lifecycle -------------------------------------------------------------------------
    async def startup(self) -> None:
        if self._started:
            return
        if self._start_lock is None:
            self._start_lock = asyncio.Lock()
        async with self._start_lock:
            if self._started:
                return
            self.client = aiohttp.ClientSession(
                connector=aiohttp.TCPConnector(
                    limit=settings.GATEWAY_UPSTREAM_MAX_CONNECTIONS,
                    keepalive_timeout=30,
                    ttl_dns_cache=60,
                ),
                timeout=aiohttp.ClientTimeout(
                    total=None,
                    sock_connect=settings.GATEWAY_CONNECT_TIMEOUT_S,
                    sock_read=settings.GATEWAY_UPSTREAM_TIMEOUT_S,
                ),
                auto_decompress=False,
                skip_auto_headers=("User-Agent",),
            )
            self.limiter = rate_limiter()
            await self.directory.reload()
            self._tasks = [
                asyncio.ensure_future(self.directory.run()),
                asyncio.ensure_future(self.keys.run()),
                asyncio.ensure_future(self.usage.run()),
                asyncio.ensure_future(self._listen()),
            ]
            self._started = True

    async def shutdown(self) -> None:
        for task in self._tasks:
            task.cancel()
        for task in self._tasks:
            with contextlib.suppress(BaseException):
                await task
        await self.usage.flush()
        if self.client is not None:
            await self.client.close()
        self._started = False

    async def _listen(self) -> None:
        """Apply events from the channel layer: instance changes reload the routing table; key
        revocations drop the cached key. Reconnects forever; refreshes cover lost events."""
        from channels.layers import get_channel_layer

        from inventiv.events import INSTANCE_GROUP, KEYS_GROUP

        while True:
            layer = get_channel_layer()
            if layer is None:
                return
            try:
                channel = await layer.new_channel("gateway.")
                for group in (INSTANCE_GROUP, KEYS_GROUP):
                    await layer.group_add(group, channel)
                joined = time.monotonic()
                while True:
                    try:
                        message = await layer.receive(channel)
                    except RedisTimeout:
                        # channels-redis blocks 5 s in BZPOPMIN, as long as redis-py's read
                        # timeout: an idle wait may time out. Nothing is lost; wait again.
                        continue
                    event = str(message.get("event", ""))
                    data = message.get("data") or {}
                    if event.startswith("EVENT:KEY_"):
                        self.keys.invalidate(str(data.get("lookup_id", "")))
                    elif event.startswith("EVENT:INSTANCE_") or event.startswith("EVENT:MODEL_"):
                        self.directory.schedule_reload()
                    if time.monotonic() - joined > 3600:  # renew group membership
                        for group in (INSTANCE_GROUP, KEYS_GROUP):
                            await layer.group_add(group, channel)
                        joined = time.monotonic()
            except asyncio.CancelledError:
                raise
            except Exception:
                logger.exception("gateway event listener failed; reconnecting")
                self.directory.schedule_reload()
                self.keys.invalidate_all()
                await asyncio.sleep(1)

    # --- ASGI ------------------------------------------------------------------------------
    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        kind = scope["type"]
        if kind == "http":
            await self._http(scope, receive, send)
        elif kind == "lifespan":
            await self._lifespan(receive, send)

    async def _lifespan(self, receive: Receive, send: Send) -> None:
        while True:
            message = await receive()
            if message["type"] == "lifespan.startup":
                try:
                    await self.startup()
                except Exception as exc:
                    logger.exception("gateway startup failed")
                    await send({"type": "lifespan.startup.failed", "message": str(exc)})
                    return
                await send({"type": "lifespan.startup.complete"})
            elif message["type"] == "lifespan.shutdown":
                await self.shutdown()
                await send({"type": "lifespan.shutdown.complete"})
                return

    def _new_id(self) -> str:
        self._ids += 1
        return f"req_{self._id_prefix}{self._ids:010x}"

    async def _http(self, scope: Scope, receive: Receive, send: Send) -> None:
        start = time.perf_counter()
        if not self._started:
            await self.startup()
        path: str = scope["path"]
        req = Request(start, self._new_id(), ENDPOINTS.get(path, ""))
        try:
            if req.endpoint:
                if scope["method"] != "POST":
                    raise GatewayError(405, "Method not allowed.", "method_not_allowed")
                await self._infer(scope, receive, send, req)
            elif path == "/v1/models" or path.startswith("/v1/models/"):
                if scope["method"] != "GET":
                    raise GatewayError(405, "Method not allowed.", "method_not_allowed")
                await self._models(scope, send, req, path[len("/v1/models/") :])
            elif path == "/healthz":
                await self._respond(send, req, 200, b'{"status":"ok"}')
            elif path == "/metrics":
                await self._metrics(scope, send, req)
            else:
                raise GatewayError(
                    404, f"Unknown path {path}.", "not_found", type="not_found_error"
                )
        except GatewayError as exc:
            req.status, req.error_code = exc.status, exc.code
            await self._respond(send, req, exc.status, exc.body(), exc.headers)
        finally:
            if req.key is not None and req.endpoint:
                await self._finish(req)

    async def _respond(
        self,
        send: Send,
        req: Request,
        status: int,
        body: bytes,
        extra: list[tuple[bytes, bytes]] | None = None,
        content_type: bytes = _JSON,
    ) -> None:
        headers = [
            (b"content-type", content_type),
            (b"content-length", str(len(body)).encode()),
            (b"x-request-id", req.request_id.encode()),
            req.overhead_header(),
        ]
        if extra:
            headers.extend(extra)
        await send({"type": "http.response.start", "status": status, "headers": headers})
        await send({"type": "http.response.body", "body": body})

    async def _metrics(self, scope: Scope, send: Send, req: Request) -> None:
        token = self.metrics_token
        if not token:
            raise GatewayError(404, "Unknown path /metrics.", "not_found", type="not_found_error")
        import hmac

        given = dict(scope["headers"]).get(b"authorization", b"")
        if not hmac.compare_digest(given, b"Bearer " + token.encode()):
            raise _unauthorized()
        body, content_type = metrics.render()
        await self._respond(send, req, 200, body, content_type=content_type.encode())

    # --- authentication and routing ----------------------------------------------------------
    async def _authenticate(self, headers: dict[bytes, bytes]) -> KeySnapshot:
        raw = headers.get(b"authorization", b"")
        if not raw.startswith(b"Bearer "):
            raise _unauthorized()
        key = await self.keys.authenticate(raw[7:].strip().decode("latin-1"))
        if key is None:
            raise _unauthorized()
        return key

    async def _models(self, scope: Scope, send: Send, req: Request, name: str) -> None:
        key = await self._authenticate(dict(scope["headers"]))
        routes = [
            r
            for r in self.table.by_org.get(key.organization_id, [])
            if key.allowed_model_ids is None or r.snapshot.id in key.allowed_model_ids
        ]
        data = [
            {
                "id": r.snapshot.name,
                "object": "model",
                "created": r.snapshot.created,
                "owned_by": r.snapshot.organization_slug,
                "ready": bool(r.instances),
                "ready_instances": len(r.instances),
            }
            for r in sorted(routes, key=lambda r: r.snapshot.name)
        ]
        if name:
            found = [m for m in data if m["id"] == name]
            if not found:
                raise GatewayError(
                    404, f"The model `{name}` does not exist.", "model_not_found", param="model"
                )
            await self._respond(send, req, 200, orjson.dumps(found[0]))
            return
        await self._respond(send, req, 200, orjson.dumps({"object": "list", "data": data}))

    async def _read_body(self, receive: Receive, content_length: bytes | None) -> bytes:
        limit = self.max_body
        if content_length is not None:
            try:
                declared = int(content_length)
            except ValueError:
                raise GatewayError(400, "Invalid Content-Length.", "invalid_request") from None
            if declared > limit:
                raise self._too_large()
        message = await receive()
        body: bytes = message.get("body", b"")
        if not message.get("more_body", False):
            if len(body) > limit:
                raise self._too_large()
            return body
        parts = [body]
        size = len(body)
        while message.get("more_body", False):
            message = await receive()
            if message["type"] == "http.disconnect":
                raise GatewayError(400, "Client disconnected.", "client_disconnected")
            chunk = message.get("body", b"")
            size += len(chunk)
            if size > limit:
                raise self._too_large()
            parts.append(chunk)
        return b"".join(parts)

    def _too_large(self) -> GatewayError:
        return GatewayError(
            413,
            f"Request body too large (limit {self.max_body} bytes).",
            "request_too_large",
        )

    @staticmethod
    def _parse(body: bytes, endpoint: str) -> dict[str, Any]:
        try:
            data = orjson.loads(body)
        except orjson.JSONDecodeError:
            raise GatewayError(400, "The body is not valid JSON.", "invalid_json") from None
        if not isinstance(data, dict):
            raise GatewayError(400, "The body must be a JSON object.", "invalid_json")
        model = data.get("model")
        if not isinstance(model, str) or not model:
            raise GatewayError(
                400, "`model` is required (a model code name).", "invalid_value", param="model"
            )
        stream = data.get("stream", False)
        if stream is not None and not isinstance(stream, bool):
            raise GatewayError(400, "`stream` must be a boolean.", "invalid_value", param="stream")
        if endpoint == "chat":
            messages = data.get("messages")
            if not isinstance(messages, list) or not messages:
                raise GatewayError(
                    400, "`messages` must be a non-empty list.", "invalid_value", param="messages"
                )
        elif endpoint == "completions" and "prompt" not in data:
            raise GatewayError(400, "`prompt` is required.", "invalid_value", param="prompt")
        elif endpoint == "embeddings" and "input" not in data:
            raise GatewayError(400, "`input` is required.", "invalid_value", param="input")
        options = data.get("stream_options")
        if options is not None and not isinstance(options, dict):
            raise GatewayError(
                400, "`stream_options` must be an object.", "invalid_value", param="stream_options"
            )
        return data

    def _prefix(self, data: dict[str, Any]) -> str:
        """The start of the prompt, for prefix-aware routing."""
        limit = self.prefix_chars
        prompt = data.get("prompt")
        if isinstance(prompt, str):
            return prompt[:limit]
        parts: list[str] = []
        size = 0
        for message in data.get("messages") or ():
            content = message.get("content") if isinstance(message, dict) else None
            if isinstance(content, list):
                content = " ".join(p.get("text", "") for p in content if isinstance(p, dict))
            if isinstance(content, str):
                parts.append(content)
                size += len(content)
                if size >= limit:
                    break
        return "\n".join(parts)[:limit]

    async def _infer(self, scope: Scope, receive: Receive, send: Send, req: Request) -> None:
        headers = dict(scope["headers"])
        req.key = key = await self._authenticate(headers)
        body = await self._read_body(receive, headers.get(b"content-length"))
        data = self._parse(body, req.endpoint)
        req.model_name = data["model"][:64]
        req.stream = stream = data.get("stream") is True and req.endpoint != "embeddings"
        route = await self.directory.lookup(key.organization_id, data["model"])
        if route is None:
            raise GatewayError(
                404,
                f"The model `{data['model']}` does not exist.",
                "model_not_found",
                param="model",
            )
        req.route = route
        if key.allowed_model_ids is not None and route.snapshot.id not in key.allowed_model_ids:
            raise GatewayError(
                403,
                f"This API key may not use the model `{data['model']}`.",
                "model_not_allowed",
                type="permission_error",
                param="model",
            )
        limits = Limits(key.id, key.rpm, key.tpm, key.concurrency)
        if limits.any:
            decision = await self.limiter.acquire(limits, req.request_id)
            if not decision.allowed:
                raise GatewayError(
                    429,
                    f"Rate limit reached for this API key ({decision.limit}). "
                    f"Retry in {decision.retry_after_s:.1f}s.",
                    "rate_limit_exceeded",
                    type="rate_limit_error",
                    headers=_retry_after(decision.retry_after_s),
                )
            req.limited = True
        # Streams: ask the engine for usage; strip it on the way back unless the client asked.
        client_usage = True
        if stream:
            options = data.get("stream_options")
            client_usage = bool(options and options.get("include_usage") is True)
            if not client_usage:
                if options is None:
                    body = _INJECT + body[body.index(b"{") + 1 :]
                else:
                    data["stream_options"] = {**options, "include_usage": True}
                    body = orjson.dumps(data)
        session = prefix = None
        policy = route.snapshot.routing_policy
        if policy == SESSION_AFFINITY:
            raw = headers.get(self.session_header)
            session = raw.decode("latin-1") if raw else None
        elif policy == PREFIX_AWARE:
            prefix = self._prefix(data)
        label = route.label
        metrics.IN_FLIGHT.labels(label).inc()
        try:
            await self._proxy(scope, receive, send, req, body, session, prefix, client_usage)
        finally:
            metrics.IN_FLIGHT.labels(label).dec()

    async def _wait_for_capacity(self, req: Request) -> ModelRoute:
        route = req.route
        assert route is not None and req.key is not None
        deadline = time.monotonic() + self.capacity_wait_s
        while not route.instances and time.monotonic() < deadline:
            await asyncio.sleep(0.05)
            found = self.table.get(req.key.organization_id, route.snapshot.name)
            route = found or route
        req.route = route
        return route

    # --- proxying ----------------------------------------------------------------------------
    async def _proxy(
        self,
        scope: Scope,
        receive: Receive,
        send: Send,
        req: Request,
        body: bytes,
        session: str | None,
        prefix: str | None,
        client_usage: bool,
    ) -> None:
        route = req.route
        assert route is not None and self.client is not None
        if not route.instances and self.capacity_wait_s > 0:
            route = await self._wait_for_capacity(req)
        self.budget.deposit()
        tried: set[str] = set()
        last: _Upstream | None = None
        path = scope["path"]
        while True:
            state = self.table.choose(route, exclude=tried, session=session, prefix=prefix)
            if state is None:
                if last is not None:
                    raise GatewayError(last.status, last.message, last.code, type="server_error")
                raise GatewayError(
                    503,
                    f"The model `{route.snapshot.name}` has no ready instance right now.",
                    "model_unavailable",
                    type="server_error",
                    headers=_retry_after(self.retry_after_s),
                )
            if req.attempts and not self.budget.withdraw():
                assert last is not None
                raise GatewayError(last.status, last.message, last.code, type="server_error")
            tried.add(state.id)
            req.attempts += 1
            req.instance = state
            state.outstanding += 1
            try:
                await self._attempt(send, receive, req, state, path, body, client_usage)
                return
            except _Upstream as exc:
                metrics.UPSTREAM_ERRORS.labels(route.label, exc.kind).inc()
                last = exc
                if exc.status == 504 or req.attempts >= self.max_attempts:
                    raise GatewayError(
                        exc.status, exc.message, exc.code, type="server_error"
                    ) from None
            finally:
                state.outstanding -= 1

    async def _attempt(
        self,
        send: Send,
        receive: Receive,
        req: Request,
        state: InstanceState,
        path: str,
        body: bytes,
        client_usage: bool,
    ) -> None:
        """One engine call. Raises ``_Upstream`` only while nothing was sent to the client."""
        assert self.client is not None
        headers = {
            "Authorization": state.auth_header,
            "Content-Type": "application/json",
            "X-Request-Id": req.request_id,
        }
        sent_at = time.perf_counter()
        try:
            resp = await self.client.post(state.url_base + path, data=body, headers=headers)
        except (TimeoutError, aiohttp.ServerTimeoutError) as exc:
            if isinstance(exc, aiohttp.ConnectionTimeoutError):
                self.table.record_failure(state)
                raise _Upstream(
                    502, "upstream_unreachable", "connect", "The engine is unreachable."
                ) from None
            self.table.record_failure(state)
            raise _Upstream(504, "upstream_timeout", "timeout", "The engine timed out.") from None
        except aiohttp.ClientError:
            self.table.record_failure(state)
            raise _Upstream(
                502, "upstream_unreachable", "connect", "The engine is unreachable."
            ) from None
        try:
            if resp.status >= 500:
                with contextlib.suppress(Exception):
                    await resp.read()
                self.table.record_failure(state)
                raise _Upstream(
                    502, "upstream_error", "status_5xx", f"The engine failed ({resp.status})."
                )
            is_sse = resp.content_type == "text/event-stream"
            if req.stream and resp.status == 200 and is_sse:
                req.upstream_s = time.perf_counter() - sent_at
                self.table.record_success(state)
                await self._relay_stream(send, receive, req, resp, client_usage)
                return
            try:
                payload = await resp.read()
            except (TimeoutError, aiohttp.ServerTimeoutError):
                self.table.record_failure(state)
                raise _Upstream(
                    504, "upstream_timeout", "timeout", "The engine timed out."
                ) from None
            except aiohttp.ClientError:
                self.table.record_failure(state)
                raise _Upstream(
                    502, "upstream_error", "connect", "The engine connection failed."
                ) from None
            req.upstream_s = time.perf_counter() - sent_at
            self.table.record_success(state)
            req.status = resp.status
            if resp.status == 200 and _USAGE_OBJ in payload:
                self._take_usage(req, payload)
            elif resp.status >= 400:
                req.error_code = f"upstream_{resp.status}"
            content_type = resp.headers.get("Content-Type", "application/json").encode()
            await self._respond(send, req, resp.status, payload, content_type=content_type)
        finally:
            resp.release()

    def _take_usage(self, req: Request, payload: bytes) -> bool:
        try:
            usage = orjson.loads(payload).get("usage")
        except (orjson.JSONDecodeError, AttributeError):
            return False
        if not isinstance(usage, dict):
            return False
        req.prompt_tokens = int(usage.get("prompt_tokens") or 0)
        req.completion_tokens = int(usage.get("completion_tokens") or 0)
        return True

    async def _relay_stream(
        self,
        send: Send,
        receive: Receive,
        req: Request,
        resp: aiohttp.ClientResponse,
        client_usage: bool,
    ) -> None:
        headers = [
            *_SSE_HEADERS,
            (b"x-request-id", req.request_id.encode()),
            req.overhead_header(),
        ]
        await send({"type": "http.response.start", "status": 200, "headers": headers})
        disconnected = asyncio.Event()

        async def watch() -> None:
            while (await receive())["type"] != "http.disconnect":
                pass
            disconnected.set()

        watcher = asyncio.ensure_future(watch())
        buffer = b""
        chunks = 0
        got_usage = False
        drain_until = 0.0
        try:
            async for data in resp.content.iter_any():
                buffer += data
                end = buffer.rfind(b"\n\n")
                if end < 0:
                    continue
                events, buffer = buffer[: end + 2], buffer[end + 2 :]
                if not client_usage:
                    events = events.replace(_USAGE_NULL, b"")
                if _USAGE_OBJ in events:
                    events, found = self._split_usage(req, events, keep=client_usage)
                    got_usage = got_usage or found
                chunks += events.count(b'"choices":[{')
                if disconnected.is_set():
                    if not drain_until:
                        req.status, req.error_code = 499, "client_disconnected"
                        drain_until = time.monotonic() + self.drain_s
                    if time.monotonic() >= drain_until:
                        break
                    continue
                if events:
                    if req.ttft is None:
                        req.ttft = time.perf_counter() - req.start
                    await send({"type": "http.response.body", "body": events, "more_body": True})
        except (TimeoutError, aiohttp.ClientError) as exc:
            timeout = isinstance(exc, (aiohttp.ServerTimeoutError, asyncio.TimeoutError))
            req.status = 504 if timeout else 502
            req.error_code = "upstream_timeout" if timeout else "upstream_stream_broken"
            if req.route is not None:
                metrics.UPSTREAM_ERRORS.labels(req.route.label, "stream").inc()
            if not disconnected.is_set():
                error = GatewayError(
                    req.status, "The engine stream failed.", req.error_code, type="server_error"
                )
                with contextlib.suppress(Exception):
                    await send(
                        {
                            "type": "http.response.body",
                            "body": b"data: " + error.body() + b"\n\n",
                            "more_body": True,
                        }
                    )
        finally:
            watcher.cancel()
            if not got_usage:
                # The engine's usage chunk never came (a broken or abandoned stream): count
                # the chunks received, one token each (the engine sends one per token).
                req.completion_tokens = chunks
            with contextlib.suppress(Exception):
                await send({"type": "http.response.body", "body": b"", "more_body": False})

    def _split_usage(self, req: Request, events: bytes, *, keep: bool) -> tuple[bytes, bool]:
        """Take the usage from the events; drop the usage-only chunk unless the client asked."""
        out = []
        found = False
        for event in events.split(b"\n\n"):
            if not event:
                continue
            usage_event = _USAGE_OBJ in event and event.startswith(b"data: {")
            if usage_event and self._take_usage(req, event[6:]):
                found = True
                if not keep and b'"choices":[]' in event:
                    continue
            out.append(event)
        return (b"\n\n".join(out) + b"\n\n" if out else b""), found

    # --- accounting --------------------------------------------------------------------------
    async def _finish(self, req: Request) -> None:
        key = req.key
        assert key is not None
        route = req.route
        label = route.label if route is not None else "unknown"
        tokens = req.prompt_tokens + req.completion_tokens
        if req.limited:
            try:
                await self.limiter.release(
                    Limits(key.id, key.rpm, key.tpm, key.concurrency), req.request_id, tokens
                )
            except Exception:
                logger.exception("could not release rate limit of %s", req.request_id)
        elapsed = time.perf_counter() - req.start
        metrics.REQUESTS.labels(label, req.endpoint, str(req.status)).inc()
        metrics.LATENCY.labels(label, req.endpoint).observe(elapsed)
        metrics.OVERHEAD.observe(max(0.0, req.overhead_s))
        if req.ttft is not None:
            metrics.TTFT.labels(label).observe(req.ttft)
        if tokens:
            metrics.TOKENS.labels(label, "prompt").inc(req.prompt_tokens)
            metrics.TOKENS.labels(label, "completion").inc(req.completion_tokens)
        self.usage.record(
            {
                "request_id": req.request_id,
                "organization_id": key.organization_id,
                "api_key_id": key.id,
                "model_code_id": route.snapshot.id if route is not None else None,
                "model_code": route.snapshot.name if route is not None else req.model_name,
                "instance_id": req.instance.id if req.instance is not None else None,
                "endpoint": req.endpoint,
                "stream": req.stream,
                "prompt_tokens": req.prompt_tokens,
                "completion_tokens": req.completion_tokens,
                "status_code": req.status,
                "error_code": req.error_code,
                "attempts": req.attempts,
                "latency_ms": round(elapsed * 1000, 3),
                "ttft_ms": round(req.ttft * 1000, 3) if req.ttft is not None else None,
                "started_at": time.time() - elapsed,
            }
        )

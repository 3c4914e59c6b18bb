"""The OpenAI-compatible gateway as a raw ASGI application (the seed's Router, data plane).

Hot path, per request: parse headers once; authenticate against the in-memory key cache (keyed
hash, constant-time compare; the database only on a cache miss); read the body with a size cap;
look the model code up in the in-memory routing table; check the key's rate limits (one Redis
script call, only for keys that have limits); pick an instance by the model code's policy; call
the engine through the process's one pooled client; pass the answer through (SSE chunk by
chunk); hand the usage record to a batched buffer. No Django request machinery, no ORM.

This module is the application and its dispatcher (lifecycle, paths, authentication, model
lookup, rate limits, accounting). The parts it calls live beside it: ``request`` (the
per-request record, plain responses), ``errors`` (the error envelope), ``body`` (body cap and
checks), ``key_cache`` (API keys), ``directory`` (keeps the ``routing`` table fresh),
``ratelimit`` (per-key limits), ``proxy`` (engine calls, retries, failover), ``stream`` (SSE
relay and usage chunks), ``usage_record`` and ``usage_buffer`` (accounting) and ``listener``
(events from the channel layer).

Accounting: every authenticated inference request's ``send`` is wrapped in ``AccountedSend``,
so that its usage is in the buffer before the answer's last bytes leave (a stream's progress
before each relayed batch); see ``apps.gateway.usage_buffer``. Shutdown (lifespan): uvicorn
stops accepting and lets requests finish within its graceful timeout, then cancels the rest
(a cut stream ends with a ``gateway_shutting_down`` error event); the shutdown waits for those
requests to record their usage, then writes what the recorder holds.

Background tasks per process: the event listener (groups ``instances`` and ``keys``), the
periodic refreshes, and the usage batcher. They start on the first request (or at lifespan
startup when run standalone).
"""

from __future__ import annotations

import asyncio
import contextlib
import gc
import hmac
import logging
import os
import time
from concurrent.futures import ThreadPoolExecutor

import orjson
from celery import current_app
from django.conf import settings

from apps.gateway import metrics, pooling, responses
from apps.gateway.body import (
    ask_for_usage,
    check_max_tokens,
    parse_body,
    prompt_prefix,
    read_body,
    shown,
)
from apps.gateway.budget import worst_case_tokens
from apps.gateway.capacity import Capacity, HeldStreamSend, wake_progress
from apps.gateway.db import db_call
from apps.gateway.directory import Directory
from apps.gateway.errors import GatewayError, unauthorized
from apps.gateway.governance import Governance
from apps.gateway.key_cache import KeyCache
from apps.gateway.listener import EventListener
from apps.gateway.proxy import Proxy
from apps.gateway.ratelimit import Limits
from apps.gateway.request import Receive, Request, Scope, Send, bearer_token, respond
from apps.gateway.routing import PREFIX_AWARE, SESSION_AFFINITY, RetryBudget, RoutingTable
from apps.gateway.tunnel import TUNNEL_PATH, TUNNELS
from apps.gateway.tunnel_auth import tunnel_instance_id
from apps.gateway.types import KeySnapshot
from apps.gateway.usage_buffer import AccountedSend, UsageRecorder, UsageUnavailable
from apps.gateway.usage_record import FINAL_SEQ, UsageRecordData

__all__ = ["ENDPOINTS", "Gateway", "GatewayError", "Request"]

logger = logging.getLogger("apps.gateway")
SHUTDOWN_USAGE_WAIT_S = 5.0

ENDPOINTS = {
    "/v1/chat/completions": "chat",
    "/v1/completions": "completions",
    "/v1/embeddings": "embeddings",
    "/v1/responses": "responses",
    "/v1/rerank": "rerank",
    "/rerank": "rerank",
    "/v2/rerank": "rerank",
    "/v1/score": "score",
    "/score": "score",
    "/tokenize": "tokenize",
    "/v1/tokenize": "tokenize",
    "/detokenize": "detokenize",
    "/v1/detokenize": "detokenize",
}


# Garbage collection in the standalone gateway (issue 14; measured with bench/gateway.py): a
# full collection walked the whole startup heap (Django, the modules: ~130,000 objects), 50 to
# 500 ms with the event loop stopped, every few seconds under load: the p99 tail. Once started,
# that heap is frozen out of the collector's reach, and young objects are collected every
# 20,000 net allocations instead of 700 (far fewer pauses, each still about a millisecond;
# most per-request objects are freed by reference counting before that).
GC_THRESHOLDS = (20_000, 20, 20)


def freeze_heap() -> None:
    """Freeze what exists now (the startup heap) and raise the collection thresholds."""
    gc.collect()
    gc.freeze()
    gc.set_threshold(*GC_THRESHOLDS)


class Gateway:
    """The ASGI callable; one per process."""

    def __init__(self) -> None:
        self.max_body = settings.GATEWAY_MAX_BODY_BYTES
        self.body_timeout_s = settings.GATEWAY_BODY_TIMEOUT_S
        self.default_context = settings.GATEWAY_DEFAULT_MAX_MODEL_LEN
        self.session_header = settings.GATEWAY_SESSION_HEADER.encode()
        self.prefix_chars = settings.GATEWAY_PREFIX_CHARS
        self.metrics_token = settings.GATEWAY_METRICS_TOKEN
        self.table = RoutingTable(
            breaker_failures=settings.GATEWAY_BREAKER_FAILURES,
            breaker_cooldown_s=settings.GATEWAY_BREAKER_COOLDOWN_S,
            load_factor=settings.GATEWAY_PREFIX_LOAD_FACTOR,
        )
        self.budget = RetryBudget(settings.GATEWAY_RETRY_BUDGET_RATIO)
        self.proxy = Proxy(self.table, self.budget)
        self._executor = ThreadPoolExecutor(max_workers=4, thread_name_prefix="gateway-db")
        self.keys = KeyCache(self._executor)
        self.directory = Directory(self.table, self._executor)
        self.usage = UsageRecorder()
        self.listener = EventListener(self.directory, self.keys)
        # Rate limits and monthly budgets: admitted before forwarding, finished after.
        self.governance = Governance()
        self._started = False
        self._start_lock: asyncio.Lock | None = None
        self._tasks: list[asyncio.Task[None]] = []
        self._ids = 0
        self._id_prefix = os.urandom(6).hex()
        self._active = 0  # inference requests in flight (shutdown waits for their usage)
        self._idle: asyncio.Event | None = None  # set when the last one ends, during shutdown
        # Load signals for the autoscaler, and holding requests at zero (docs/autoscaling.md).
        self.capacity = Capacity(self._id_prefix, self._send_wake, self._wake_progress)

    # --- lifecycle -------------------------------------------------------------------------
    async def startup(self) -> None:
        if self._started:
            return
        if self._start_lock is None:
            self._start_lock = asyncio.Lock()
        async with self._start_lock:
            if self._started:
                return
            self.proxy.open()
            self.governance.open()
            await self.directory.reload()
            self._tasks = [
                asyncio.ensure_future(self.directory.run()),
                asyncio.ensure_future(self.keys.run()),
                asyncio.ensure_future(self.usage.run()),
                asyncio.ensure_future(self.listener.run()),
                asyncio.ensure_future(self.capacity.run()),
            ]
            self._started = True

    async def shutdown(self) -> None:
        # Requests cancelled by the server's graceful timeout are still recording their usage.
        if self._active:
            self._idle = asyncio.Event()
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._idle.wait(), timeout=SHUTDOWN_USAGE_WAIT_S)
        for task in self._tasks:
            task.cancel()
        for task in self._tasks:
            with contextlib.suppress(BaseException):
                await task
        await self.usage.close()
        await self.proxy.close()
        self._started = False

    # --- ASGI ------------------------------------------------------------------------------
    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        kind = scope["type"]
        if kind == "http":
            await self._http(scope, receive, send)
        elif kind == "websocket":
            if scope["path"] != TUNNEL_PATH:
                await send({"type": "websocket.close", "code": 4404})
                return
            await TUNNELS.serve(scope, receive, send, self._tunnel_instance)
        elif kind == "lifespan":
            await self._lifespan(receive, send)

    async def _tunnel_instance(self, credential: str) -> str | None:
        """An agent's tunnel credential → its instance (apps.gateway.tunnel_auth)."""
        return await db_call(self._executor, tunnel_instance_id, credential=credential)

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
                freeze_heap()
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
        accounted: AccountedSend | None = None
        if req.endpoint:
            send = accounted = AccountedSend(
                send, req, self.usage, self._usage_record, self._finish_recorded
            )
            self._active += 1
        try:
            if req.endpoint:
                if scope["method"] != "POST":
                    raise GatewayError("method_not_allowed", "Method not allowed.")
                await self._infer(scope, receive, send, req)
            elif path == "/v1/models" or path.startswith("/v1/models/"):
                if scope["method"] != "GET":
                    raise GatewayError("method_not_allowed", "Method not allowed.")
                await self._models(scope, send, req, path[len("/v1/models/") :])
            elif path == "/healthz":
                await respond(send, req, 200, b'{"status":"ok"}')
            elif path == "/metrics":
                await self._metrics(scope, send, req)
            else:
                raise GatewayError("not_found", f"Unknown path {shown(path)}.")
        except GatewayError as exc:
            req.status, req.error_code = exc.status, exc.code
            await respond(send, req, exc.status, exc.body(), exc.headers)
        except Exception:
            # Never uvicorn's plain-text 500: the envelope, and the request recorded as failed.
            logger.exception("gateway: unexpected error in %s", req.request_id)
            error = GatewayError("server_error", "The gateway failed unexpectedly; retry later.")
            req.status, req.error_code = error.status, error.code
            # Raises if the answer had already started (the stream relay ends it itself).
            with contextlib.suppress(Exception):
                await respond(send, req, error.status, error.body())
        finally:
            if accounted is not None:
                try:
                    if req.key is not None:
                        await self._finish(req, accounted)
                finally:
                    self._active -= 1
                    if not self._active and self._idle is not None:
                        self._idle.set()

    async def _metrics(self, scope: Scope, send: Send, req: Request) -> None:
        token = self.metrics_token
        if not token:
            raise GatewayError("not_found", "Unknown path /metrics.")
        given = bearer_token(dict(scope["headers"]).get(b"authorization", b""))
        if given is None or not hmac.compare_digest(given, token.encode()):
            raise unauthorized()
        body, content_type = metrics.render()
        await respond(send, req, 200, body, content_type=content_type.encode())

    # --- authentication and routing ----------------------------------------------------------
    async def _authenticate(self, headers: dict[bytes, bytes]) -> KeySnapshot:
        token = bearer_token(headers.get(b"authorization", b""))
        if token is None:
            raise unauthorized()
        key = await self.keys.authenticate(token.decode("latin-1"))
        if key is None:
            raise unauthorized()
        return key

    async def _models(self, scope: Scope, send: Send, req: Request, name: str) -> None:
        key = await self._authenticate(dict(scope["headers"]))
        routes = [
            r
            for r in self.table.by_org.get(key.organization_id, [])
            if key.allowed_model_code_ids is None or r.snapshot.id in key.allowed_model_code_ids
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
                    "model_not_found",
                    f"The model `{shown(name)}` does not exist.",
                    param="model",
                )
            await respond(send, req, 200, orjson.dumps(found[0]))
            return
        await respond(send, req, 200, orjson.dumps({"object": "list", "data": data}))

    async def _infer(self, scope: Scope, receive: Receive, send: Send, req: Request) -> None:
        headers = dict(scope["headers"])
        req.key = key = await self._authenticate(headers)
        body = await read_body(
            receive, headers.get(b"content-length"), self.max_body, self.body_timeout_s
        )
        data = parse_body(body, req.endpoint)
        req.model_name = data["model"][:64]
        req.stream = stream = data.get("stream") is True and req.endpoint != "embeddings"
        route = await self.directory.lookup(key.organization_id, data["model"])
        if route is None:
            raise GatewayError(
                "model_not_found",
                f"The model `{shown(data['model'])}` does not exist.",
                param="model",
            )
        req.route = route
        check_max_tokens(data, route.snapshot.max_model_len or self.default_context)
        allowed = key.allowed_model_code_ids
        if allowed is not None and route.snapshot.id not in allowed:
            raise GatewayError(
                "model_not_allowed",
                f"This API key may not use the model `{shown(data['model'])}`.",
                param="model",
            )
        # Rate limits and budget in one step (apps.gateway.governance): 429
        # rate_limit_exceeded, or 429 insufficient_quota if the worst case cannot be reserved.
        req.ticket = await self.governance.admit(
            Limits(key.id, key.rpm, key.tpm, key.concurrency),
            org_id=key.organization_id,
            model_code_id=route.snapshot.id,
            request_id=req.request_id,
            body_bytes=len(body),
            completion_tokens=worst_case_tokens(
                data, route.snapshot.max_model_len or self.default_context, req.endpoint
            ),
        )
        # Streams: ask the engine for usage; strip it on the way back unless the client asked.
        client_usage = True
        if req.endpoint == "responses":
            # Passed through, or translated onto chat for engines without it (issue 17).
            path, body, translate = responses.prepare(data, route.snapshot.engine)
            send = responses.ResponsesSend(send, req, data, translate)
            scope = {**scope, "path": path}
        elif req.endpoint in pooling.ENGINE_PATHS:
            req.stream = False  # rerank, score, tokenize, detokenize: plain JSON answers
            path = pooling.prepare(data, req.endpoint, route.snapshot.engine)
            send = pooling.PooledSend(send, req)
            scope = {**scope, "path": path}
        elif stream:
            body, client_usage = ask_for_usage(data, body)
        session = prefix = None
        policy = route.snapshot.routing_policy
        if policy == SESSION_AFFINITY:
            raw = headers.get(self.session_header)
            session = raw.decode("latin-1") if raw else None
        elif policy == PREFIX_AWARE:
            view = responses.prefix_view(data) if req.endpoint == "responses" else data
            prefix = prompt_prefix(view, self.prefix_chars)
        label = route.label
        metrics.child(metrics.IN_FLIGHT, label).inc()
        try:
            with self.capacity.counting(route.snapshot.id) as sample:
                if not route.instances and route.snapshot.holds_at_zero:
                    send = await self._hold(receive, send, req)
                    sample.held = True  # its wait is a cold start, not a latency sample
                await self.proxy.forward(
                    scope, receive, send, req, body, session, prefix, client_usage
                )
                sample.ttft = req.ttft
        finally:
            metrics.child(metrics.IN_FLIGHT, label).dec()

    # --- scale from zero (apps.gateway.capacity, docs/autoscaling.md) -------------------------
    async def _hold(self, receive: Receive, send: Send, req: Request) -> Send:
        """Hold a request for a model code with no ready instance until one is routable (the
        model code woken once across gateways); refusals raise ``GatewayError``. A stream gets
        its head and SSE comments with the wake's progress while it waits."""
        route, key = req.route, req.key
        assert route is not None and key is not None
        name = route.snapshot.name

        def ready() -> bool:
            found = self.table.get(key.organization_id, name)
            return found is not None and bool(found.instances)

        async def disconnected() -> None:
            while (await receive())["type"] != "http.disconnect":
                pass

        held = HeldStreamSend(send) if req.stream else None
        await self.capacity.hold(
            model_code_id=route.snapshot.id,
            model_name=name,
            timeout_s=route.snapshot.hold_timeout_s,
            ready=ready,
            comment=held.comment if held is not None else None,
            disconnected=disconnected,
        )
        req.route = self.table.get(key.organization_id, name) or route
        return held if held is not None else send

    async def _send_wake(self, model_code_id: int) -> None:
        """The wake command (``autoscale_wake_task``), sent by name off the event loop."""
        loop = asyncio.get_running_loop()
        await loop.run_in_executor(
            self._executor,
            lambda: current_app.send_task(
                "apps.instances.tasks.autoscale_wake_task",
                kwargs={"model_code_id": model_code_id},
            ),
        )

    async def _wake_progress(self, model_code_id: int) -> str:
        loop = asyncio.get_running_loop()
        return await loop.run_in_executor(self._executor, wake_progress, model_code_id)

    # --- accounting --------------------------------------------------------------------------
    async def _finish_recorded(
        self, req: Request, target: tuple[str, str, str], record: bytes, refusal: bool = False
    ) -> bool:
        """The request's governance finish written with its final usage record, in one script
        (``AccountedSend`` calls it as the record is committed); False if it cannot be.

        At most once per request (the script's finish marker): if it raises (Redis gone, the
        reply timed out, the task cancelled), whether it ran is unknown, so the ticket is put
        back and ``_finish`` sends the finish again (a no-op if the script ran). ``refusal``:
        the record is the 503 of an answer whose own script's outcome is unknown; False then
        means that script had run (the answer is recorded and billed: deliver it)."""
        ticket = req.ticket
        if ticket is None or not self.governance.can_record(ticket, target[0]):
            return False
        req.ticket = None
        try:
            wrote = await self.governance.finish_recorded(
                ticket, req.prompt_tokens, req.completion_tokens, (target[1], target[2]), record
            )
        except BaseException:
            req.ticket = ticket
            logger.warning(
                "could not write the finish and record of %s; retried", req.request_id,
                exc_info=True,
            )  # fmt: skip
            raise
        # Finished already: by an earlier script whose reply was lost, and its record stands.
        return wrote or not refusal

    async def _finish(self, req: Request, accounted: AccountedSend) -> None:
        key = req.key
        assert key is not None
        route = req.route
        label = route.label if route is not None else "unknown"
        tokens = req.prompt_tokens + req.completion_tokens
        if not accounted.committed:
            # The answer's final message never went out (the client left, the task was
            # cancelled): record what the request got.
            with contextlib.suppress(UsageUnavailable):
                await accounted.commit()
        if req.ticket is not None:
            # Not finished with the final record (the in-process backend, or its write failed).
            try:
                await self.governance.finish(req.ticket, req.prompt_tokens, req.completion_tokens)
            except Exception:
                logger.exception("could not release the limits and budget of %s", req.request_id)
        elapsed = time.perf_counter() - req.start
        metrics.child(metrics.REQUESTS, label, req.endpoint, str(req.status)).inc()
        metrics.child(metrics.LATENCY, label, req.endpoint).observe(elapsed)
        metrics.OVERHEAD.observe(max(0.0, req.overhead_s))
        if req.ttft is not None:
            metrics.child(metrics.TTFT, label).observe(req.ttft)
        if tokens:
            metrics.child(metrics.TOKENS, label, "prompt").inc(req.prompt_tokens)
            metrics.child(metrics.TOKENS, label, "completion").inc(req.completion_tokens)

    def _usage_record(self, req: Request, seq: int) -> UsageRecordData:
        """The request's usage record; a checkpoint (``seq`` < ``FINAL_SEQ``) says what the
        record is if nothing else comes: the gateway died mid-answer, unless it failed already."""
        key = req.key
        assert key is not None
        route = req.route
        status, error_code = req.status, req.error_code
        if seq != FINAL_SEQ and status < 400:
            status, error_code = 502, "gateway_interrupted"
        elapsed = time.perf_counter() - req.start
        return UsageRecordData(
            request_id=req.request_id,
            organization_id=key.organization_id,
            api_key_id=key.id,
            model_code_id=route.snapshot.id if route is not None else None,
            model_code=route.snapshot.name if route is not None else req.model_name,
            instance_id=req.instance.id if req.instance is not None else None,
            endpoint=req.endpoint,
            stream=req.stream,
            prompt_tokens=req.prompt_tokens,
            completion_tokens=req.completion_tokens,
            status_code=status,
            error_code=error_code,
            attempts=req.attempts,
            latency_ms=round(elapsed * 1000, 3),
            ttft_ms=round(req.ttft * 1000, 3) if req.ttft is not None else None,
            started_at=time.time() - elapsed,
            seq=seq,
        )

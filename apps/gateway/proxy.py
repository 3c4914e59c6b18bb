"""Calling the engines: the process's one pooled client, retries with failover, the answer.

Guarantees:

* One ``aiohttp.ClientSession`` per process (``open``/``close``), pooled keep-alive limited to
  ``GATEWAY_UPSTREAM_MAX_CONNECTIONS``, connect and read timeouts, no automatic decompression.
* A connection failure or a 5xx answer is retried on another instance (never the same one
  twice) only while nothing has been sent to the client, up to ``GATEWAY_MAX_ATTEMPTS`` and
  within the retry budget. A read timeout is not retried (504: the engine may be working).
* Every failure and success is reported to the routing table's breaker; an instance's
  outstanding count is held for exactly the duration of its attempt.
* With no ready instance, waits up to ``GATEWAY_CAPACITY_WAIT_S`` then refuses with 503
  ``model_unavailable`` and ``Retry-After``; after failed attempts, the last failure's status.
* Plain answers are read whole and passed through (engine 4xx included, recorded as
  ``upstream_<status>``); streams are relayed by ``apps.gateway.stream``. The response is
  always released.
"""

from __future__ import annotations

import asyncio
import contextlib
import time

import aiohttp
from django.conf import settings

from apps.gateway import metrics
from apps.gateway.errors import GatewayError, retry_after
from apps.gateway.request import Receive, Request, Scope, Send, respond
from apps.gateway.routing import InstanceState, ModelRoute, RetryBudget, RoutingTable
from apps.gateway.stream import USAGE_OBJ, relay_stream, take_usage


class Upstream(Exception):
    """An engine call that failed; ``retryable`` when no byte reached the client and the engine
    did not start working on the request (connection failure) or answered 5xx."""

    def __init__(self, status: int, code: str, kind: str, message: str) -> None:
        super().__init__(message)
        self.status, self.code, self.kind, self.message = status, code, kind, message


class Proxy:
    """Forwards requests to a model code's instances; one per process."""

    def __init__(self, table: RoutingTable, budget: RetryBudget) -> None:
        self.table = table
        self.budget = budget
        self.max_attempts = settings.GATEWAY_MAX_ATTEMPTS
        self.capacity_wait_s = settings.GATEWAY_CAPACITY_WAIT_S
        self.retry_after_s = settings.GATEWAY_RETRY_AFTER_S
        self.drain_s = settings.GATEWAY_DISCONNECT_DRAIN_S
        self.client: aiohttp.ClientSession | None = None

    def open(self) -> None:
        """Create the pooled client (inside the running event loop)."""
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

    async def close(self) -> None:
        if self.client is not None:
            await self.client.close()

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

    async def forward(
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
        """Answer the request from one of ``req.route``'s instances, failing over; raises
        ``GatewayError`` only while nothing was sent to the client."""
        route = req.route
        assert route is not None and self.client is not None
        if not route.instances and self.capacity_wait_s > 0:
            route = await self._wait_for_capacity(req)
        self.budget.deposit()
        tried: set[str] = set()
        last: Upstream | None = None
        path = scope["path"]
        while True:
            state = self.table.choose(route, exclude=tried, session=session, prefix=prefix)
            if state is None:
                if last is not None:
                    raise GatewayError(last.code, last.message)
                raise GatewayError(
                    "model_unavailable",
                    f"The model `{route.snapshot.name}` has no ready instance right now.",
                    headers=retry_after(self.retry_after_s),
                )
            if req.attempts and not self.budget.withdraw():
                assert last is not None
                raise GatewayError(last.code, last.message)
            tried.add(state.id)
            req.attempts += 1
            req.instance = state
            state.outstanding += 1
            try:
                await self._attempt(send, receive, req, state, path, body, client_usage)
                return
            except Upstream as exc:
                metrics.UPSTREAM_ERRORS.labels(route.label, exc.kind).inc()
                last = exc
                if exc.status == 504 or req.attempts >= self.max_attempts:
                    raise GatewayError(exc.code, exc.message) from None
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
        """One engine call. Raises ``Upstream`` only while nothing was sent to the client."""
        assert self.client is not None
        headers = {
            "Authorization": state.auth_header,
            "Content-Type": "application/json",
            "X-Request-Id": req.request_id,
        }
        sent_at = time.perf_counter()
        try:
            resp = await self.client.post(
                state.url_base + path, data=body, headers=headers, ssl=state.ssl
            )
        except (TimeoutError, aiohttp.ServerTimeoutError) as exc:
            if isinstance(exc, aiohttp.ConnectionTimeoutError):
                self.table.record_failure(state)
                raise Upstream(
                    502, "upstream_unreachable", "connect", "The engine is unreachable."
                ) from None
            self.table.record_failure(state)
            raise Upstream(504, "upstream_timeout", "timeout", "The engine timed out.") from None
        except aiohttp.ClientError:
            self.table.record_failure(state)
            raise Upstream(
                502, "upstream_unreachable", "connect", "The engine is unreachable."
            ) from None
        try:
            if resp.status >= 500:
                with contextlib.suppress(Exception):
                    await resp.read()
                self.table.record_failure(state)
                raise Upstream(
                    502, "upstream_error", "status_5xx", f"The engine failed ({resp.status})."
                )
            is_sse = resp.content_type == "text/event-stream"
            if req.stream and resp.status == 200 and is_sse:
                req.upstream_s = time.perf_counter() - sent_at
                self.table.record_success(state)
                await relay_stream(send, receive, req, resp, client_usage, self.drain_s)
                return
            try:
                payload = await resp.read()
            except (TimeoutError, aiohttp.ServerTimeoutError):
                self.table.record_failure(state)
                raise Upstream(
                    504, "upstream_timeout", "timeout", "The engine timed out."
                ) from None
            except aiohttp.ClientError:
                self.table.record_failure(state)
                raise Upstream(
                    502, "upstream_error", "connect", "The engine connection failed."
                ) from None
            req.upstream_s = time.perf_counter() - sent_at
            self.table.record_success(state)
            req.status = resp.status
            if resp.status == 200 and USAGE_OBJ in payload:
                take_usage(req, payload)
            elif resp.status >= 400:
                req.error_code = f"upstream_{resp.status}"
            content_type = resp.headers.get("Content-Type", "application/json").encode()
            await respond(send, req, resp.status, payload, content_type=content_type)
        finally:
            resp.release()

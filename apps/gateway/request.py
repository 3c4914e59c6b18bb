"""One request's record and its plain (non-streamed) response.

Guarantees: ``Request`` is what one request accumulates (key, route, instance, status, tokens,
timings) and ends up as its usage record; it has ``__slots__`` and no per-request allocation
beyond itself. ``respond`` sends a whole body with ``Content-Length``, ``x-request-id`` and
``x-gateway-overhead-ms`` (time in the gateway, excluding the engine's), in two ASGI messages.
``bearer_token`` reads an ``Authorization`` header's bearer token, whatever the scheme's case.
"""

from __future__ import annotations

import time
from collections.abc import Awaitable, Callable, MutableMapping
from typing import Any

from apps.gateway.governance import Ticket
from apps.gateway.routing import InstanceState, ModelRoute
from apps.gateway.types import KeySnapshot

Scope = MutableMapping[str, Any]
Message = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]

JSON = b"application/json"
_OVERHEAD = b"x-gateway-overhead-ms"


class Request:
    """What one request accumulates; ends up as its usage record."""

    __slots__ = (
        "attempts",
        "completion_tokens",
        "endpoint",
        "error_code",
        "instance",
        "key",
        "model_name",
        "overhead_s",
        "prompt_tokens",
        "request_id",
        "route",
        "start",
        "status",
        "stream",
        "ticket",
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
        self.ticket: Ticket | None = None  # its rate limits and budget reservation, once admitted
        self.overhead_s = 0.0

    def overhead_header(self) -> tuple[bytes, bytes]:
        overhead = self.overhead_s = time.perf_counter() - self.start - self.upstream_s
        return (_OVERHEAD, f"{overhead * 1000:.3f}".encode())


def bearer_token(authorization: bytes) -> bytes | None:
    """The token of an ``Authorization: Bearer <token>`` header, the scheme matched
    case-insensitively (RFC 7235); None for another scheme or no token."""
    scheme, _, token = authorization.strip().partition(b" ")
    token = token.strip()
    if scheme.lower() != b"bearer" or not token:
        return None
    return token


async def respond(
    send: Send,
    req: Request,
    status: int,
    body: bytes,
    extra: list[tuple[bytes, bytes]] | None = None,
    content_type: bytes = JSON,
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

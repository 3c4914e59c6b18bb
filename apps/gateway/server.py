"""The HTTP/1.1 protocol both uvicorn roles (web and gateway) serve with: uvicorn's httptools
protocol, bounded before any application code runs.

uvicorn's httptools protocol has no limit on the size of a request's head (a 64 MB unterminated
header is buffered whole) and no deadline for it (a client trickling a byte every few seconds
holds a connection forever; ``--timeout-keep-alive`` only runs between requests), and its own
refusals are plain text. This protocol adds, per connection:

* a **head size limit**: a request line plus headers over ``--h11-max-incomplete-event-size``
  bytes (default :data:`DEFAULT_MAX_HEAD_BYTES`; the option h11 uses for the same purpose) is
  refused with 431 ``request_header_fields_too_large`` and the connection closed, having
  buffered at most the limit plus one read;
* a **head deadline**: a request's head must be complete within ``--timeout-keep-alive``
  seconds of the connection opening, or of the request's first byte (between requests,
  uvicorn's keep-alive timer closes an idle connection); otherwise 408 ``request_timeout``
  (or a silent close if nothing came), whatever the trickle rate;
* **refusals in the envelope**: malformed HTTP (400 ``invalid_request``) and
  ``--limit-concurrency`` (503 ``server_busy``) answer OpenAI's error envelope as JSON, as every
  other error of the platform, instead of uvicorn's plain text.

The body's own deadline is the application's (``GATEWAY_BODY_TIMEOUT_S`` in the gateway). Use
it with ``--http apps.gateway.server:HttpProtocol`` (``python -m apps.gateway`` does). Plain
Python and uvicorn: loading it imports no Django.
"""

from __future__ import annotations

import asyncio
from typing import Any

from uvicorn.protocols.http.httptools_impl import STATUS_LINE, HttpToolsProtocol

from apps.gateway.errors import GatewayError

__all__ = ["DEFAULT_MAX_HEAD_BYTES", "HttpProtocol"]

DEFAULT_MAX_HEAD_BYTES = 64 * 1024


def _error_bytes(error: GatewayError) -> bytes:
    body = error.body()
    return b"".join(
        [
            STATUS_LINE[error.status],
            b"content-type: application/json\r\n",
            b"content-length: " + str(len(body)).encode() + b"\r\n",
            b"connection: close\r\n\r\n",
            body,
        ]
    )


async def _busy(scope: Any, receive: Any, send: Any) -> None:
    """The application a request gets past ``--limit-concurrency``."""
    error = GatewayError("server_busy", "The server is at its connection limit; retry later.")
    await send(
        {
            "type": "http.response.start",
            "status": error.status,
            "headers": [(b"content-type", b"application/json"), (b"connection", b"close")],
        }
    )
    await send({"type": "http.response.body", "body": error.body()})


class HttpProtocol(HttpToolsProtocol):
    """uvicorn's httptools protocol with a head size limit, a head deadline and enveloped
    refusals (see the module docstring)."""

    def __init__(self, config: Any, server_state: Any, app_state: Any, _loop: Any = None) -> None:
        super().__init__(config, server_state, app_state, _loop)
        self.max_head_bytes = config.h11_max_incomplete_event_size or DEFAULT_MAX_HEAD_BYTES
        self.head_timeout_s = max(0.1, float(config.timeout_keep_alive))
        # Checked here, so that the refusal is ours (uvicorn's is plain text).
        self.concurrency_limit, self.limit_concurrency = self.limit_concurrency, None
        self._in_head = True
        self._head_bytes = 0
        self._head_timer: asyncio.TimerHandle | None = None

    # --- the head deadline -----------------------------------------------------------------
    def _arm_head_timer(self) -> None:
        if self._head_timer is None:
            self._head_timer = self.loop.call_later(self.head_timeout_s, self._head_timed_out)

    def _disarm_head_timer(self) -> None:
        if self._head_timer is not None:
            self._head_timer.cancel()
            self._head_timer = None

    def _head_timed_out(self) -> None:
        self._head_timer = None
        if not self._in_head or self.transport.is_closing():
            return
        if self._head_bytes:
            error = GatewayError(
                "request_timeout",
                f"The request head was not received within {self.head_timeout_s:g}s.",
            )
            self.transport.write(_error_bytes(error))
        self.transport.close()

    def _refuse(self, error: GatewayError) -> None:
        self._disarm_head_timer()
        self._in_head = False
        if not self.transport.is_closing():
            self.transport.write(_error_bytes(error))
            self.transport.close()

    # --- uvicorn's protocol ----------------------------------------------------------------
    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        super().connection_made(transport)
        self._arm_head_timer()

    def connection_lost(self, exc: Exception | None) -> None:
        self._disarm_head_timer()
        super().connection_lost(exc)

    def data_received(self, data: bytes) -> None:
        if self._in_head:
            self._head_bytes += len(data)
        super().data_received(data)
        if self._in_head and self._head_bytes > self.max_head_bytes:
            self._refuse(
                GatewayError(
                    "request_header_fields_too_large",
                    f"The request head is over {self.max_head_bytes} bytes.",
                )
            )

    def send_400_response(self, msg: str) -> None:
        self._refuse(GatewayError("invalid_request", "Invalid HTTP request."))

    def on_message_begin(self) -> None:
        super().on_message_begin()
        self._in_head = True
        self._arm_head_timer()

    def on_headers_complete(self) -> None:
        self._in_head = False
        self._head_bytes = 0
        self._disarm_head_timer()
        limit = self.concurrency_limit
        # uvicorn's own rule for --limit-concurrency, answered in the envelope.
        if limit is not None and (len(self.connections) >= limit or len(self.tasks) >= limit):
            app, self.app = self.app, _busy
            try:
                super().on_headers_complete()
            finally:
                self.app = app
            return
        super().on_headers_complete()

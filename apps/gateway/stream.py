"""Relaying an engine's SSE stream to the client, and the usage it reports.

Guarantees:

* Events are forwarded whole, as soon as a complete one (``\\n\\n``-terminated) arrives, with
  ``more_body``; the stream is always ended with an empty final body, even after an error.
* The gateway always asks the engine for usage (``INJECT_USAGE`` or ``include_usage``); if the
  client did not, ``,"usage":null`` is removed from chunks and the usage-only chunk is dropped.
  The usage is taken into the ``Request``; without a usage chunk (broken or cut stream)
  completion tokens are the content-bearing chunks (one token each; the role-only first chunk
  and empty deltas are not tokens) that were sent.
* ``req.completion_tokens`` is kept up to date *before* each batch is sent, so that the
  accounting ``send`` (``apps.gateway.usage_buffer.AccountedSend``) checkpoints what is about
  to be delivered; if it cannot (``UsageUnavailable``), the stream ends with a 503
  ``usage_unavailable`` error event and only what was sent is billed.
* A client that disconnects stops receiving; the engine's stream is still read for up to
  ``drain_s`` seconds to count usage exactly (what the engine generated), recorded as 499.
* A stream that breaks after headers were sent ends with an SSE ``data: {"error": ...}`` event
  (502 ``upstream_stream_broken`` or 504 ``upstream_timeout``), which the OpenAI SDK raises as
  ``APIError``; nothing is retried here. A stream cancelled by the server's graceful-shutdown
  timeout ends the same way with 503 ``gateway_shutting_down``.
"""

from __future__ import annotations

import asyncio
import contextlib
import time

import aiohttp
import orjson

from apps.gateway import metrics
from apps.gateway.errors import GatewayError
from apps.gateway.request import Receive, Request, Send
from apps.gateway.usage_buffer import UsageUnavailable

_SSE_HEADERS = [(b"content-type", b"text/event-stream"), (b"cache-control", b"no-cache")]
_USAGE_NULL = b',"usage":null'
USAGE_OBJ = b'"usage":{'
# Spliced in place of a body's opening brace when a stream has no ``stream_options``.
INJECT_USAGE = b'{"stream_options":{"include_usage":true},'


def content_tokens(events: bytes) -> int:
    """Content-bearing choices in a batch of events (chat ``content`` or completion ``text``
    not empty): one token each. Keys are matched with their opening quote, which JSON escapes
    inside strings."""
    return (
        events.count(b'"content":"')
        - events.count(b'"content":""')
        + events.count(b'"text":"')
        - events.count(b'"text":""')
    )


def take_usage(req: Request, payload: bytes) -> bool:
    """Set the request's token counts from a JSON payload's ``usage``; False if it has none."""
    try:
        usage = orjson.loads(payload).get("usage")
    except (orjson.JSONDecodeError, AttributeError):
        return False
    if not isinstance(usage, dict):
        return False
    req.prompt_tokens = int(usage.get("prompt_tokens") or 0)
    req.completion_tokens = int(usage.get("completion_tokens") or 0)
    return True


async def relay_stream(
    send: Send,
    receive: Receive,
    req: Request,
    resp: aiohttp.ClientResponse,
    client_usage: bool,
    drain_s: float,
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
    received = sent = 0  # content tokens received from the engine / delivered to the client
    got_usage = False
    drain_until = 0.0

    async def error_event(code: str, message: str) -> None:
        error = GatewayError(code, message)
        with contextlib.suppress(Exception):
            await send(
                {
                    "type": "http.response.body",
                    "body": b"data: " + error.body() + b"\n\n",
                    "more_body": True,
                }
            )

    try:
        async for data in resp.content.iter_any():
            buffer += data
            end = buffer.rfind(b"\n\n")
            if end < 0:
                continue
            events, buffer = buffer[: end + 2], buffer[end + 2 :]
            if not client_usage:
                events = events.replace(_USAGE_NULL, b"")
            if USAGE_OBJ in events:
                events, found = split_usage(req, events, keep=client_usage)
                got_usage = got_usage or found
            tokens = content_tokens(events)
            received += tokens
            if disconnected.is_set():
                if not drain_until:
                    req.status, req.error_code = 499, "client_disconnected"
                    drain_until = time.monotonic() + drain_s
                if time.monotonic() >= drain_until:
                    break
                continue
            if events:
                if req.ttft is None:
                    req.ttft = time.perf_counter() - req.start
                if not got_usage:
                    req.completion_tokens = sent + tokens  # checkpointed before it leaves
                await send({"type": "http.response.body", "body": events, "more_body": True})
                sent += tokens
    except UsageUnavailable:
        req.status, req.error_code = 503, "usage_unavailable"
        req.completion_tokens = sent  # what was delivered, not what the engine reported
        got_usage = True
        await error_event(req.error_code, "Usage could not be recorded; the stream was cut.")
    except (TimeoutError, aiohttp.ClientError) as exc:
        timeout = isinstance(exc, (aiohttp.ServerTimeoutError, asyncio.TimeoutError))
        req.status = 504 if timeout else 502
        req.error_code = "upstream_timeout" if timeout else "upstream_stream_broken"
        if req.route is not None:
            metrics.UPSTREAM_ERRORS.labels(req.route.label, "stream").inc()
        if not disconnected.is_set():
            await error_event(req.error_code, "The engine stream failed.")
    except asyncio.CancelledError:
        # The server's graceful-shutdown timeout: end the stream honestly, then stop.
        req.status, req.error_code = 503, "gateway_shutting_down"
        if not disconnected.is_set():
            await error_event(req.error_code, "The gateway is shutting down; retry.")
        raise
    finally:
        watcher.cancel()
        if not got_usage:
            # The engine's usage chunk never came (a broken, cut or abandoned stream): bill
            # the tokens delivered, or those generated when the client left.
            req.completion_tokens = received if disconnected.is_set() else sent
        with contextlib.suppress(Exception):
            await send({"type": "http.response.body", "body": b"", "more_body": False})


def split_usage(req: Request, events: bytes, *, keep: bool) -> tuple[bytes, bool]:
    """Take the usage from the events; drop the usage-only chunk unless the client asked."""
    out = []
    found = False
    for event in events.split(b"\n\n"):
        if not event:
            continue
        usage_event = USAGE_OBJ in event and event.startswith(b"data: {")
        if usage_event and take_usage(req, event[6:]):
            found = True
            if not keep and b'"choices":[]' in event:
                continue
        out.append(event)
    return (b"\n\n".join(out) + b"\n\n" if out else b""), found

"""Relaying an engine's SSE stream to the client, and the usage it reports.

Guarantees:

* Events are forwarded whole, as soon as a complete one (``\\n\\n``-terminated) arrives, with
  ``more_body``; the stream is always ended with an empty final body, even after an error.
* The gateway always asks the engine for usage (``INJECT_USAGE`` or ``include_usage``); if the
  client did not, ``,"usage":null`` is removed from chunks and the usage-only chunk is dropped.
  The usage is taken into the ``Request``; without a usage chunk (broken or abandoned stream)
  completion tokens are the number of content chunks seen (one token each).
* A client that disconnects stops receiving; the engine's stream is still read for up to
  ``drain_s`` seconds to count usage exactly, and the request is recorded as 499.
* A stream that breaks after headers were sent ends with an SSE ``data: {"error": ...}`` event
  (502 ``upstream_stream_broken`` or 504 ``upstream_timeout``); nothing is retried here.
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

_SSE_HEADERS = [(b"content-type", b"text/event-stream"), (b"cache-control", b"no-cache")]
_USAGE_NULL = b',"usage":null'
USAGE_OBJ = b'"usage":{'
# Spliced in place of a body's opening brace when a stream has no ``stream_options``.
INJECT_USAGE = b'{"stream_options":{"include_usage":true},'


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
            if USAGE_OBJ in events:
                events, found = split_usage(req, events, keep=client_usage)
                got_usage = got_usage or found
            chunks += events.count(b'"choices":[{')
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
                await send({"type": "http.response.body", "body": events, "more_body": True})
    except (TimeoutError, aiohttp.ClientError) as exc:
        timeout = isinstance(exc, (aiohttp.ServerTimeoutError, asyncio.TimeoutError))
        req.status = 504 if timeout else 502
        req.error_code = "upstream_timeout" if timeout else "upstream_stream_broken"
        if req.route is not None:
            metrics.UPSTREAM_ERRORS.labels(req.route.label, "stream").inc()
        if not disconnected.is_set():
            error = GatewayError(req.error_code, "The engine stream failed.")
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

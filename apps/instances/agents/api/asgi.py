"""The heartbeat's ASGI fast path: ``POST /internal/agent/v1/heartbeat`` answered without
Django's request machinery (middleware, a thread per request), since the fleet's heartbeats
are most of the web role's requests (10,000 machines every 5 s: 2,000 a second).

The same answers as the Django view (``beat.heartbeat_answer``, one implementation). The work
runs in a small pool of threads, each taking a database connection from the process's pool for
one heartbeat and giving it back; the event loop only reads the body and writes the answer.
Nothing here needs the Host header, a cookie or a session: the bearer credential is the only
authority, as for the view (which `/internal/` already exempts from the HTTPS redirect)."""

from __future__ import annotations

import asyncio
import json
import logging
from concurrent.futures import ThreadPoolExecutor
from typing import Any

from django.conf import settings
from django.db import connection

from agent.protocol import HEARTBEAT_PATH
from apps.instances.agents.api.beat import heartbeat_answer
from inventiv.error_codes import envelope
from inventiv.errors import ApplicationError

log = logging.getLogger(__name__)

MAX_BODY_BYTES = 256 * 1024  # a heartbeat is about 1 KiB
_JSON = [(b"content-type", b"application/json")]


class BodyTooLarge(ApplicationError):
    status_code = 413
    code = "request_too_large"


def _answer(authorization: str, body: bytes) -> tuple[int, bytes]:
    try:
        return heartbeat_answer(authorization=authorization, body=body)
    except Exception:
        # What the Django view would answer through handler500: the envelope, not uvicorn's
        # plain-text 500 (a pool timeout, a database that went away, a row deleted meanwhile).
        log.exception("heartbeat failed")
        return 500, json.dumps(
            envelope("Internal server error; retry later.", "server_error")
        ).encode()
    finally:
        connection.close()  # back to the pool (or closed, without one)


class HeartbeatApp:
    """Serves the heartbeat path itself and hands every other request to ``default``."""

    def __init__(self, default: Any, *, threads: int | None = None) -> None:
        self.default = default
        self.threads = threads or max(2, min(settings.DATABASE_POOL_MAX_SIZE or 4, 4))
        self._executor: ThreadPoolExecutor | None = None

    @staticmethod
    def handles(scope: dict[str, Any]) -> bool:
        return (
            scope.get("type") == "http"
            and scope.get("method") == "POST"
            and scope.get("path") == HEARTBEAT_PATH
        )

    async def __call__(self, scope: dict[str, Any], receive: Any, send: Any) -> None:
        if not self.handles(scope):
            await self.default(scope, receive, send)
            return
        if self._executor is None:
            self._executor = ThreadPoolExecutor(self.threads, thread_name_prefix="heartbeat")
        authorization = ""
        for name, value in scope.get("headers", ()):
            if name == b"authorization":
                authorization = value.decode("latin-1")
                break
        chunks: list[bytes] = []
        size = 0
        more = True
        while more:
            message = await receive()
            if message["type"] == "http.disconnect":
                return
            chunk = message.get("body", b"")
            size += len(chunk)
            if size > MAX_BODY_BYTES:
                error = BodyTooLarge(f"A heartbeat is at most {MAX_BODY_BYTES} bytes.")
                await _send(send, error.status_code, _error_body(error))
                return
            chunks.append(chunk)
            more = message.get("more_body", False)
        loop = asyncio.get_running_loop()
        status, body = await loop.run_in_executor(
            self._executor, _answer, authorization, b"".join(chunks)
        )
        await _send(send, status, body)


def _error_body(error: ApplicationError) -> bytes:
    return json.dumps(error.body()).encode()


async def _send(send: Any, status: int, body: bytes) -> None:
    headers = [*_JSON, (b"content-length", str(len(body)).encode())]
    await send({"type": "http.response.start", "status": status, "headers": headers})
    await send({"type": "http.response.body", "body": body})

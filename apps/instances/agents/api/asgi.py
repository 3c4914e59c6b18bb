"""The heartbeat's ASGI fast path: ``POST /internal/agent/v1/heartbeat`` answered without
Django's request machinery (middleware, a thread per request), since the fleet's heartbeats
are most of the web role's requests (10,000 machines every 5 s: 2,000 a second).

The same answers as the Django view (``beat.heartbeat_answer``): the same look-up, the same
steady-state decision (``services.heartbeat_steady``), the same full path. On PostgreSQL a
steady beat never leaves the event loop: its look-up by credential hash and, when due, its
UPDATE run on a few asynchronous connections of the process's own (``BeatDatabase``, taken
out of the process's ``DATABASE_POOL_MAX_SIZE`` by ``reserve_heartbeat_connections``), as
prepared statements; a thread hop and a Django pool checkout per beat cost more CPU than the
beat's own work. A beat the memo cannot answer (a first beat, a change the full path acts
upon) runs the full path in a small pool of threads with Django's pooled connections. On
SQLite (the embedded mode), every beat runs in those threads.

Nothing here needs the Host header, a cookie or a session: the bearer credential is the only
authority, as for the view (which `/internal/` already exempts from the HTTPS redirect)."""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import time
from concurrent.futures import ThreadPoolExecutor
from typing import Any

from django.conf import settings
from django.db import connection, connections

from agent.protocol import HEARTBEAT_PATH, PROTOCOL_VERSION, Heartbeat
from apps.instances.agents.api.beat import heartbeat_answer
from apps.instances.agents.api.wire import bearer_from_header, parse_body
from apps.instances.agents.services import (
    AgentAuthError,
    agent_heartbeat_full,
    beats_batch_update_sql,
    heartbeat_lease_renew,
    heartbeat_steady,
    identify_row,
    identify_sql,
)
from inventiv import crypto
from inventiv.error_codes import envelope
from inventiv.errors import ApplicationError

log = logging.getLogger(__name__)

MAX_BODY_BYTES = 256 * 1024  # a heartbeat is about 1 KiB
_JSON = [(b"content-type", b"application/json")]
# The event loop's connections: one answers a look-up in a fraction of a millisecond, so two
# keep up with several thousand beats a second and let one wait on a slow UPDATE.
HEARTBEAT_DB_CONNECTIONS = 2
# Steady beats' writes go to the database in one statement this often (see BeatDatabase).
BEAT_FLUSH_S = 0.5
# A beat waits this long at most for the event loop's connections to open; after an open that
# failed (the database down), beats fail at once (503) this long before the next open.
BEAT_DB_WAIT_S = 0.5
BEAT_DB_RETRY_S = 1.0


class BodyTooLarge(ApplicationError):
    status_code = 413
    code = "request_too_large"


class DatabaseUnavailable(ApplicationError):
    status_code = 503
    code = "database_unavailable"


def _retrieved(task: asyncio.Task[Any]) -> None:
    # The open's failure reaches the beats that waited for it; none may have (all timed out).
    if not task.cancelled():
        task.exception()


def _server_error() -> tuple[int, bytes]:
    # What the Django view would answer through handler500: the envelope, not uvicorn's
    # plain-text 500 (a pool timeout, a database that went away, a row deleted meanwhile).
    return 500, json.dumps(envelope("Internal server error; retry later.", "server_error")).encode()


def _answer(authorization: str, body: bytes) -> tuple[int, bytes]:
    """A whole beat in a thread (SQLite, or no event-loop connections)."""
    try:
        return heartbeat_answer(authorization=authorization, body=body)
    except Exception:
        log.exception("heartbeat failed")
        return _server_error()
    finally:
        connection.close()  # back to the pool (or closed, without one)


def _full(row: dict[str, Any], message: Heartbeat, wall: float) -> tuple[int, bytes]:
    """The full path of one beat in a thread (its look-up already done)."""
    try:
        return 200, agent_heartbeat_full(row=row, heartbeat=message, wall=wall)
    except ApplicationError as exc:
        return exc.status_code, _error_body(exc)
    except Exception:
        log.exception("heartbeat failed")
        return _server_error()
    finally:
        connection.close()


def reserve_heartbeat_connections() -> int:
    """Take the event loop's connections out of this process's Django pool (so that the
    process still opens at most ``DATABASE_POOL_MAX_SIZE``); how many (0: none, the beats then
    run in threads). Only before the process's first query: the pool is sized when made, so
    once it is (a query before ``inventiv.asgi`` is imported: ``run_embedded``'s migrations, a
    test) it keeps its size and this reserves nothing. Once per process: a second call
    reserves nothing either (the connections belong to the first caller)."""
    global _reserved
    options = settings.DATABASES["default"].get("OPTIONS", {})
    pool = options.get("pool")
    wrapper = connections["default"]
    if connection.vendor != "postgresql" or not isinstance(pool, dict):
        return 0
    if _reserved or wrapper.alias in getattr(type(wrapper), "_connection_pools", {}):
        return 0
    size = int(pool.get("max_size") or 0)
    reserved = min(HEARTBEAT_DB_CONNECTIONS, size - 2)  # Django keeps at least two
    if reserved <= 0:
        return 0
    pool["max_size"] = size - reserved
    pool["min_size"] = min(int(pool.get("min_size") or 0), size - reserved)
    _reserved = True
    return reserved


_reserved = False


class BeatDatabase:
    """``size`` asynchronous PostgreSQL connections (``psycopg_pool.AsyncConnectionPool``, on
    the event loop that first uses it) for the steady beat's look-up, prepared on each
    connection at its first use, and the beats' writes, made in batches: one UPDATE every
    ``BEAT_FLUSH_S`` for every beat that had something to write (``last_heartbeat_at`` due,
    ``engine_metrics`` moved) instead of a round trip and a commit per beat. A batch that
    fails is kept for the next one (merged under anything newer); a row another transaction
    holds locked (a transition under way) is skipped, since its next beat sees what was not
    written and writes it again. Autocommit: each statement is its own transaction."""

    def __init__(self, size: int) -> None:
        self.size = size
        self._pool: Any = None
        self._opening: asyncio.Task[Any] | None = None
        self._retry_at = 0.0  # the event loop's clock: no new open before it
        self._pending: dict[str, dict[str, Any]] = {}
        self._flusher: asyncio.Task[None] | None = None

    def _conninfo(self) -> str:
        from psycopg.conninfo import make_conninfo

        params = connection.get_connection_params()
        for name in ("cursor_factory", "context", "prepare_threshold", "pool"):
            params.pop(name, None)
        return make_conninfo(**{k: v for k, v in params.items() if v is not None})

    @staticmethod
    def prepare_threshold() -> int | None:
        """The look-up prepared at its first use (0), unless ``DATABASES["default"]["OPTIONS"]``
        says otherwise: ``prepare_threshold`` there is used as is (``None``: never prepared,
        e.g. behind PgBouncer in transaction mode without ``max_prepared_statements``)."""
        options = settings.DATABASES["default"].get("OPTIONS", {})
        if "prepare_threshold" in options:
            value = options["prepare_threshold"]
            return None if value is None else int(value)
        return 0 if settings.DATABASE_PREPARED_STATEMENTS else None

    async def _get_pool(self) -> Any:
        """The connections, opened once. While an open is under way a beat waits for it at
        most ``BEAT_DB_WAIT_S``; after a failed open, beats fail at once for ``BEAT_DB_RETRY_S``
        (``DatabaseUnavailable``, a 503): a database that is down never holds beats (and
        uvicorn's ``--limit-concurrency`` slots) for the open's whole timeout."""
        if self._pool is not None:
            return self._pool
        loop = asyncio.get_running_loop()
        if self._opening is None:
            if loop.time() < self._retry_at:
                raise DatabaseUnavailable("The database is unavailable; retry later.")
            self._opening = loop.create_task(self._open())
            self._opening.add_done_callback(_retrieved)
        try:
            return await asyncio.wait_for(asyncio.shield(self._opening), BEAT_DB_WAIT_S)
        except TimeoutError:
            raise DatabaseUnavailable("The database is unavailable; retry later.") from None

    async def _open(self) -> Any:
        from psycopg_pool import AsyncConnectionPool

        pool = AsyncConnectionPool(
            self._conninfo(),
            min_size=self.size,
            max_size=self.size,
            kwargs={"autocommit": True, "prepare_threshold": self.prepare_threshold()},
            timeout=settings.DATABASE_POOL_TIMEOUT_S,
            open=False,
            name="heartbeat",
        )
        try:
            await pool.open(wait=True, timeout=settings.DATABASE_POOL_TIMEOUT_S)
        except BaseException as exc:
            self._retry_at = asyncio.get_running_loop().time() + BEAT_DB_RETRY_S
            await pool.close()
            if isinstance(exc, Exception):
                log.warning("heartbeat connections could not be opened: %s", exc)
                raise DatabaseUnavailable("The database is unavailable; retry later.") from None
            raise
        else:
            self._pool = pool
            return pool
        finally:
            self._opening = None

    async def identify(self, hashed: str) -> Any:
        pool = await self._get_pool()
        async with pool.connection() as conn:
            cursor = await conn.execute(identify_sql(), (hashed,))
            return await cursor.fetchone()

    def write(self, instance_id: str, fields: dict[str, Any]) -> None:
        """Write ``fields`` (of ``heartbeat_steady``) with the next batch."""
        self._pending.setdefault(instance_id, {}).update(fields)
        if self._flusher is None or self._flusher.done():
            self._flusher = asyncio.get_running_loop().create_task(self._flush_forever())

    def forget(self, instance_id: str) -> None:
        """Drop the instance's pending write (a newer beat writes its own)."""
        self._pending.pop(instance_id, None)

    async def _flush_forever(self) -> None:
        while True:
            await asyncio.sleep(BEAT_FLUSH_S)
            try:
                await self.flush()
            except Exception:  # the database away for a moment: the next batch retries
                log.exception("heartbeats could not be written; kept for the next batch")

    async def flush(self) -> int:
        """Write the pending beats now (one statement); how many rows were written."""
        pending, self._pending = self._pending, {}
        if not pending:
            return 0
        ids = sorted(pending)
        times = [pending[i].get("last_heartbeat_at") for i in ids]
        metrics = [
            None
            if pending[i].get("engine_metrics") is None
            else json.dumps(pending[i]["engine_metrics"])
            for i in ids
        ]
        try:
            pool = await self._get_pool()
            async with pool.connection() as conn:
                cursor = await conn.execute(beats_batch_update_sql(), (ids, times, metrics))
                return len(await cursor.fetchall())
        except BaseException:
            for instance_id, fields in pending.items():
                self._pending[instance_id] = {**fields, **self._pending.get(instance_id, {})}
            raise

    async def close(self) -> None:
        """Write what is pending, then close the connections."""
        if self._flusher is not None:
            self._flusher.cancel()
            self._flusher = None
        if self._opening is not None:
            self._opening.cancel()
            with contextlib.suppress(BaseException):
                await self._opening
        if self._pool is not None:
            try:
                await self.flush()
            finally:
                pool, self._pool = self._pool, None
                await pool.close()


class HeartbeatApp:
    """Serves the heartbeat path itself and hands every other request to ``default``.
    ``db_connections``: the event loop's connections (see :func:`reserve_heartbeat_connections`;
    ``None``: what :func:`reserve_heartbeat_connections` reserves now, so never past the pool)."""

    def __init__(
        self, default: Any, *, threads: int | None = None, db_connections: int | None = None
    ) -> None:
        self.default = default
        self.threads = threads or max(2, min(settings.DATABASE_POOL_MAX_SIZE or 4, 4))
        self._executor: ThreadPoolExecutor | None = None
        if db_connections is None:
            db_connections = reserve_heartbeat_connections()
        self.db = BeatDatabase(db_connections) if db_connections > 0 else None

    @staticmethod
    def handles(scope: dict[str, Any]) -> bool:
        return (
            scope.get("type") == "http"
            and scope.get("method") == "POST"
            and scope.get("path") == HEARTBEAT_PATH
        )

    def executor(self) -> ThreadPoolExecutor:
        if self._executor is None:
            self._executor = ThreadPoolExecutor(self.threads, thread_name_prefix="heartbeat")
        return self._executor

    async def close(self) -> None:
        """Write what is pending, close the event loop's connections and the threads. Tests
        call it; a web worker does not (compose runs it with ``--lifespan off``, and nothing
        else tells the app the worker stops): at a worker's exit the batch not yet written, at
        most ``BEAT_FLUSH_S`` of steady beats' ``last_heartbeat_at`` and ``engine_metrics``, is
        dropped (as are the lease renewals the process had not yet sent, batched as often),
        and those agents' next beats, on another worker, write them again: 0.5 s is far
        within ``INVENTIV_HEARTBEAT_DEADLINE_S``."""
        if self.db is not None:
            await self.db.close()
        if self._executor is not None:
            self._executor.shutdown(wait=True)
            self._executor = None

    async def __call__(self, scope: dict[str, Any], receive: Any, send: Any) -> None:
        if not self.handles(scope):
            await self.default(scope, receive, send)
            return
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
        body = chunks[0] if len(chunks) == 1 else b"".join(chunks)
        if self.db is None:
            loop = asyncio.get_running_loop()
            status, answer = await loop.run_in_executor(
                self.executor(), _answer, authorization, body
            )
        else:
            status, answer = await self._answer_on_loop(self.db, authorization, body)
        await _send(send, status, answer)

    async def _answer_on_loop(
        self, db: BeatDatabase, authorization: str, body: bytes
    ) -> tuple[int, bytes]:
        """``beat.heartbeat_answer`` with the steady beat's queries on the event loop: the
        credential before the body, the same errors."""
        try:
            wall = time.time()
            credential = bearer_from_header(
                authorization, AgentAuthError("Invalid agent credential.")
            )
            hashed = crypto.token_hash(credential)
            row = identify_row(await db.identify(hashed), hashed=hashed)
            message = parse_body(body, Heartbeat, version=PROTOCOL_VERSION)
            steady = heartbeat_steady(row=row, heartbeat=message)
            if steady is None:
                # The full path writes the beat itself: an older pending one must not follow it.
                db.forget(row["id"])
                loop = asyncio.get_running_loop()
                return await loop.run_in_executor(self.executor(), _full, row, message, wall)
            reply, fields = steady
            if fields:
                db.write(row["id"], fields)
            heartbeat_lease_renew(row["id"], wall)
            return 200, reply
        except ApplicationError as exc:
            return exc.status_code, _error_body(exc)
        except Exception:
            log.exception("heartbeat failed")
            return _server_error()


def _error_body(error: ApplicationError) -> bytes:
    return json.dumps(error.body()).encode()


async def _send(send: Any, status: int, body: bytes) -> None:
    headers = [*_JSON, (b"content-length", str(len(body)).encode())]
    await send({"type": "http.response.start", "status": status, "headers": headers})
    await send({"type": "http.response.body", "body": body})

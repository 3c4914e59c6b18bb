"""Load signals shared by the gateways, and holding requests for a model code at zero.

Guarantees:

* **Signals**: every gateway process counts, per model code, its requests in flight (between
  the model lookup and the end of the answer) and its held requests (waiting for a first ready
  instance). It publishes them every ``GATEWAY_LOAD_PUBLISH_S`` to a board: in Redis one hash
  per gateway process with a TTL of ``GATEWAY_LOAD_TTL_S`` (a dead gateway's counts vanish),
  plus the time of the last request per model code (idle-to-zero); in-process in the embedded
  mode (gateway and worker share the process). The autoscaler reads the sums (``load_board``).
* **Latency**: each request a gateway passes to an engine (not one held at zero: its wait is a
  cold start) gives its time to first token; the samples go out with the counts to a list per
  model code (Redis, the newest ``TTFT_KEEP`` for ``TTFT_KEEP_S``; in-process alike), and the
  autoscaler reads their p95 over the policy's window (``read(ttft_window_s=...)``).
* **Exactly one wake**: the first held request for a model code takes a wake key (Redis
  ``SET NX`` with a TTL, or the in-process equivalent) and only its taker sends the wake
  command, however many gateway processes hold requests at once. The autoscaler also sees the
  held count on its next pass, so a lost command delays the wake, never loses it.
* **Holding**: at most ``GATEWAY_HOLD_QUEUE_MAX`` requests per model code per process wait
  (beyond: 429 ``hold_queue_full`` with ``Retry-After``), each for at most the model code's
  ``hold_timeout_s`` (then 503 ``model_unavailable`` with ``Retry-After``). A streaming client
  gets the answer's head at once and an SSE comment line (``: waking <model> (<status>)``)
  every ``GATEWAY_HOLD_COMMENT_S``, carrying the furthest instance's status, so proxies keep
  the connection and a person sees why. A client that disconnects while held leaves the queue
  at once.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import math
import threading
import time
from collections import deque
from collections.abc import Awaitable, Callable, Iterator, MutableMapping
from dataclasses import dataclass
from typing import Any, Protocol

import redis
import redis.asyncio as aioredis
from django.conf import settings

from apps.gateway.errors import GatewayError, retry_after
from apps.gateway.request import Send
from apps.instances.models import Instance

logger = logging.getLogger("apps.gateway.capacity")


@dataclass(frozen=True, slots=True)
class Load:
    """What the gateways report for one model code."""

    inflight: int = 0
    held: int = 0
    last_request_at: float | None = None  # unix time, any gateway
    # Time to first token over the window asked for (``read(ttft_window_s=...)``): the p95 in
    # milliseconds of the samples every gateway took, and how many there were.
    ttft_p95_ms: float | None = None
    ttft_samples: int = 0


# The most recent time-to-first-token samples kept per model code (all gateways together), and
# for how long: a window longer than that, or busier than that many, sees only the newest.
TTFT_KEEP = 2000
TTFT_KEEP_S = 3600


def p95(values: list[float]) -> float | None:
    """The 95th percentile (nearest rank) of ``values``, None when there are none."""
    if not values:
        return None
    ordered = sorted(values)
    return ordered[max(0, math.ceil(0.95 * len(ordered)) - 1)]


def _ttft_load(samples: list[tuple[float, float]], window_s: float | None) -> dict[str, Any]:
    if window_s is None:
        return {}
    since = time.time() - window_s
    recent = [ttft for at, ttft in samples if at >= since]
    found = p95(recent)
    return {
        "ttft_p95_ms": round(found * 1000, 1) if found is not None else None,
        "ttft_samples": len(recent),
    }


@dataclass(slots=True)
class Sample:
    """One request counted in flight: its time to first token once the engine answered
    (``None`` until then), and whether it was held at zero (its wait is a cold start, not
    the engines' latency: not a sample)."""

    ttft: float | None = None
    held: bool = False


class LoadBoard(Protocol):
    async def publish(
        self,
        *,
        gateway_id: str,
        counts: dict[int, tuple[int, int]],
        requested: set[int],
        ttft: dict[int, list[float]] | None = None,
    ) -> None:
        """Replace this gateway's counts ``{model_code_id: (inflight, held)}``; ``requested``:
        the model codes that received a request since the last publish; ``ttft``: the times to
        first token (seconds) measured since then, added to the model codes' recent samples."""

    async def take_wake(self, *, model_code_id: int, ttl_s: float) -> bool:
        """True for exactly one caller per model code until the key expires or is cleared."""

    def read(self, *, model_code_id: int, ttft_window_s: float | None = None) -> Load:
        """The sums over live gateways (sync: the worker's side); with ``ttft_window_s``, the
        time to first token p95 over that window too."""

    def clear_wake(self, *, model_code_id: int) -> None:
        """Once the model code has a ready instance: the next time at zero wakes again."""


# --- Redis -----------------------------------------------------------------------------------


class RedisLoadBoard:
    """Clients are created on first use: the async one in the gateway's loop, the sync one in
    the worker."""

    def __init__(self, url: str | None = None) -> None:
        found = url or settings.REDIS_URL
        assert found, "the Redis board is picked only when REDIS_URL is set"
        self._url: str = found
        prefix = settings.REDIS_PREFIX + "gw:load:"
        self._gateway = prefix + "gw:"
        self._last = prefix + "last:"
        self._wake = prefix + "wake:"
        self._ttft = prefix + "ttft:"
        self._ttl_ms = int(settings.GATEWAY_LOAD_TTL_S * 1000)
        self._async: aioredis.Redis | None = None
        self._sync: redis.Redis | None = None

    def _aclient(self) -> aioredis.Redis:
        if self._async is None:
            self._async = aioredis.Redis.from_url(
                self._url, max_connections=8, socket_timeout=5, socket_connect_timeout=2
            )
        return self._async

    def _client(self) -> redis.Redis:
        if self._sync is None:
            self._sync = redis.Redis.from_url(self._url, socket_timeout=5, socket_connect_timeout=2)
        return self._sync

    async def publish(
        self,
        *,
        gateway_id: str,
        counts: dict[int, tuple[int, int]],
        requested: set[int],
        ttft: dict[int, list[float]] | None = None,
    ) -> None:
        key = self._gateway + gateway_id
        now = str(time.time())
        async with self._aclient().pipeline(transaction=True) as pipe:
            pipe.delete(key)
            if counts:
                pipe.hset(key, mapping={str(m): f"{i} {h}" for m, (i, h) in counts.items()})
                pipe.pexpire(key, self._ttl_ms)
            for model_code_id in requested:
                pipe.set(self._last + str(model_code_id), now, ex=30 * 86_400)
            for model_code_id, samples in (ttft or {}).items():
                if samples:
                    samples_key = self._ttft + str(model_code_id)
                    pipe.lpush(samples_key, *[f"{now} {value:.6f}" for value in samples])
                    pipe.ltrim(samples_key, 0, TTFT_KEEP - 1)
                    pipe.expire(samples_key, TTFT_KEEP_S)
            await pipe.execute()

    async def take_wake(self, *, model_code_id: int, ttl_s: float) -> bool:
        taken = await self._aclient().set(
            self._wake + str(model_code_id), b"1", nx=True, px=max(1, int(ttl_s * 1000))
        )
        return bool(taken)

    def read(self, *, model_code_id: int, ttft_window_s: float | None = None) -> Load:
        client = self._client()
        field = str(model_code_id)
        inflight = held = 0
        for key in client.scan_iter(match=self._gateway + "*", count=200):
            raw = client.hget(key, field)
            if raw:
                i, h = raw.split()
                inflight, held = inflight + int(i), held + int(h)
        last = client.get(self._last + field)
        samples: list[tuple[float, float]] = []
        if ttft_window_s is not None:
            for raw in client.lrange(self._ttft + field, 0, -1):
                at, value = raw.split()
                samples.append((float(at), float(value)))
        return Load(
            inflight, held, float(last) if last else None, **_ttft_load(samples, ttft_window_s)
        )

    def clear_wake(self, *, model_code_id: int) -> None:
        self._client().delete(self._wake + str(model_code_id))


# --- in-process (embedded mode) ------------------------------------------------------------


class InProcessLoadBoard:
    """The same semantics in memory; thread-safe (the worker's threads read it)."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._gateways: dict[str, tuple[float, dict[int, tuple[int, int]]]] = {}
        self._last: dict[int, float] = {}
        self._wakes: dict[int, float] = {}
        self._ttft: dict[int, deque[tuple[float, float]]] = {}

    async def publish(
        self,
        *,
        gateway_id: str,
        counts: dict[int, tuple[int, int]],
        requested: set[int],
        ttft: dict[int, list[float]] | None = None,
    ) -> None:
        now = time.time()
        with self._lock:
            self._gateways[gateway_id] = (now + settings.GATEWAY_LOAD_TTL_S, dict(counts))
            for model_code_id in requested:
                self._last[model_code_id] = now
            for model_code_id, samples in (ttft or {}).items():
                kept = self._ttft.setdefault(model_code_id, deque(maxlen=TTFT_KEEP))
                kept.extend((now, value) for value in samples)

    async def take_wake(self, *, model_code_id: int, ttl_s: float) -> bool:
        now = time.monotonic()
        with self._lock:
            if self._wakes.get(model_code_id, 0.0) > now:
                return False
            self._wakes[model_code_id] = now + ttl_s
            return True

    def read(self, *, model_code_id: int, ttft_window_s: float | None = None) -> Load:
        now = time.time()
        inflight = held = 0
        with self._lock:
            for expires, counts in self._gateways.values():
                if expires > now and model_code_id in counts:
                    i, h = counts[model_code_id]
                    inflight, held = inflight + i, held + h
            samples = list(self._ttft.get(model_code_id, ()))
            last = self._last.get(model_code_id)
        return Load(inflight, held, last, **_ttft_load(samples, ttft_window_s))

    def clear_wake(self, *, model_code_id: int) -> None:
        with self._lock:
            self._wakes.pop(model_code_id, None)


_in_process_board = InProcessLoadBoard()
_redis_board: RedisLoadBoard | None = None


def load_board() -> LoadBoard:
    """The worker's board (one per process), or the process's own in the embedded mode."""
    global _redis_board
    if not settings.REDIS_URL:
        return _in_process_board
    if _redis_board is None:
        _redis_board = RedisLoadBoard()
    return _redis_board


def new_gateway_board() -> LoadBoard:
    """A gateway's board: a new Redis client set per event loop, or the process's own."""
    return RedisLoadBoard() if settings.REDIS_URL else _in_process_board


# --- the gateway's side ------------------------------------------------------------------


Wake = Callable[[int], Awaitable[None]]
Progress = Callable[[int], Awaitable[str]]
Ready = Callable[[], bool]


class Capacity:
    """One per gateway process: counts, the publisher loop, holds."""

    def __init__(self, gateway_id: str, wake: Wake, progress: Progress) -> None:
        self.gateway_id = gateway_id
        self.board: LoadBoard | None = None
        self._wake = wake
        self._progress = progress
        self._inflight: dict[int, int] = {}
        self._held: dict[int, int] = {}
        self._requested: set[int] = set()
        self._ttft: dict[int, list[float]] = {}
        self.queue_max = settings.GATEWAY_HOLD_QUEUE_MAX
        self.comment_s = settings.GATEWAY_HOLD_COMMENT_S
        self.retry_after_s = float(settings.GATEWAY_RETRY_AFTER_S)

    def _board(self) -> LoadBoard:
        if self.board is None:
            self.board = new_gateway_board()
        return self.board

    @contextlib.contextmanager
    def counting(self, model_code_id: int) -> Iterator[Sample]:
        """Counts one request in flight for the model code while the block runs. The block
        fills the ``Sample`` it gets: its time to first token becomes one of the model code's
        latency samples (published with the counts), unless it was held at zero."""
        self._inflight[model_code_id] = self._inflight.get(model_code_id, 0) + 1
        self._requested.add(model_code_id)
        sample = Sample()
        try:
            yield sample
        finally:
            self._inflight[model_code_id] -= 1
            if not self._inflight[model_code_id]:
                del self._inflight[model_code_id]
            if sample.ttft is not None and not sample.held:
                pending = self._ttft.setdefault(model_code_id, [])
                if len(pending) < TTFT_KEEP:  # per publish interval: a bound, not a window
                    pending.append(sample.ttft)

    def counts(self) -> dict[int, tuple[int, int]]:
        ids = set(self._inflight) | set(self._held)
        return {m: (self._inflight.get(m, 0), self._held.get(m, 0)) for m in ids}

    async def publish(self) -> None:
        requested, self._requested = self._requested, set()
        ttft, self._ttft = self._ttft, {}
        await self._board().publish(
            gateway_id=self.gateway_id, counts=self.counts(), requested=requested, ttft=ttft
        )

    async def run(self) -> None:
        """Publish every ``GATEWAY_LOAD_PUBLISH_S`` (the board's TTL covers a dead process)."""
        while True:
            try:
                await self.publish()
            except Exception:  # the board is a signal: the next round retries
                logger.warning("could not publish gateway load", exc_info=True)
            await asyncio.sleep(settings.GATEWAY_LOAD_PUBLISH_S)

    async def hold(
        self,
        *,
        model_code_id: int,
        model_name: str,
        timeout_s: float,
        ready: Ready,
        comment: Callable[[bytes], Awaitable[None]] | None,
        disconnected: Callable[[], Awaitable[None]],
    ) -> None:
        """Wait until ``ready()`` (an instance is routable), waking the model code once.
        Raises ``GatewayError`` (``hold_queue_full``, ``model_unavailable``), or
        ``asyncio.CancelledError`` when the client leaves (``disconnected`` completes)."""
        if self._held.get(model_code_id, 0) >= self.queue_max:
            raise GatewayError(
                "hold_queue_full",
                f"Too many requests are waiting for `{model_name}` to wake; retry later.",
                headers=retry_after(self.retry_after_s),
            )
        self._held[model_code_id] = self._held.get(model_code_id, 0) + 1
        self._requested.add(model_code_id)
        gone = asyncio.ensure_future(disconnected())
        try:
            with contextlib.suppress(Exception):
                await self.publish()  # the autoscaler sees the held request at once
            try:
                if await self._board().take_wake(model_code_id=model_code_id, ttl_s=timeout_s):
                    await self._wake(model_code_id)
            except Exception:  # the held count on the board wakes it on the next pass
                logger.warning("could not send the wake of %s", model_code_id, exc_info=True)
            deadline = time.monotonic() + timeout_s
            next_comment = time.monotonic()
            while not ready():
                now = time.monotonic()
                if now >= deadline:
                    raise GatewayError(
                        "model_unavailable",
                        f"The model `{model_name}` did not wake within {timeout_s:.0f}s.",
                        headers=retry_after(self.retry_after_s),
                    )
                if comment is not None and now >= next_comment:
                    status = await self._progress(model_code_id)
                    await comment(f": waking {model_name} ({status})\n\n".encode())
                    next_comment = now + self.comment_s
                await asyncio.wait({gone}, timeout=min(0.1, deadline - now))
                if gone.done():
                    raise asyncio.CancelledError("the client left while held")
        finally:
            gone.cancel()
            self._held[model_code_id] -= 1
            if not self._held[model_code_id]:
                del self._held[model_code_id]


class HeldStreamSend:
    """Wraps a held streaming request's ``send``: the answer's head (200, SSE) goes out at once
    so comment lines can follow; a later head is absorbed, and a later error answer (a refusal,
    an engine failure) is sent as one SSE ``data:`` event carrying the envelope."""

    def __init__(self, send: Send) -> None:
        self._send = send
        self.started = False
        self._as_event = False

    async def start(self) -> None:
        if not self.started:
            self.started = True
            await self._send(
                {
                    "type": "http.response.start",
                    "status": 200,
                    "headers": [
                        (b"content-type", b"text/event-stream"),
                        (b"cache-control", b"no-cache"),
                    ],
                }
            )

    async def comment(self, line: bytes) -> None:
        await self.start()
        await self._send({"type": "http.response.body", "body": line, "more_body": True})

    async def __call__(self, message: MutableMapping[str, Any]) -> None:
        if not self.started:
            await self._send(message)
            if message["type"] == "http.response.start":
                self.started = True
            return
        if message["type"] == "http.response.start":
            self._as_event = message.get("status", 200) >= 400
            return
        if self._as_event and message["type"] == "http.response.body":
            body = message.get("body", b"")
            more = message.get("more_body", False)
            if body:
                body = b"data: " + body.strip() + b"\n\n"
            await self._send({"type": "http.response.body", "body": body, "more_body": more})
            return
        await self._send(message)


def wake_progress(model_code_id: int) -> str:
    """The furthest status of the model code's instances on their way to ready (sync, ORM: run
    it off the event loop)."""
    order = ["provisioning", "booting", "starting", "unavailable", "ready"]
    statuses = set(
        Instance.objects.filter(llm_model_id=model_code_id, status__in=order).values_list(
            "status", flat=True
        )
    )
    for status in reversed(order):
        if status in statuses:
            return status
    return "waiting for an instance"

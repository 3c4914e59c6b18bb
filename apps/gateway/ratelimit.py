"""Per-key rate limits (requests and tokens per minute, concurrent requests), in two
implementations behind one small interface:

* Redis (production): Lua scripts, atomic across every gateway process, on Redis' clock.
* In-process (embedded mode only, ``REDIS_URL`` unset): the same semantics in memory, valid
  because the embedded mode runs a single gateway process.

``rate_limiter()`` picks the implementation from the settings.
"""

from __future__ import annotations

import math
import threading
import time
from dataclasses import dataclass, field
from typing import Protocol

import redis.asyncio as aioredis
from django.conf import settings

# A concurrency lease outlives a request by at most this long if its gateway dies mid-request.
LEASE_S = 900


@dataclass(frozen=True, slots=True)
class Limits:
    key_id: int
    rpm: int = 0  # 0 means unlimited
    tpm: int = 0
    concurrency: int = 0

    @property
    def any(self) -> bool:
        return bool(self.rpm or self.tpm or self.concurrency)


@dataclass(frozen=True, slots=True)
class Decision:
    allowed: bool
    # Which limit refused ("requests", "tokens", "concurrency") and when to retry.
    limit: str = ""
    retry_after_s: float = 0.0


ALLOW = Decision(True)
_KINDS = {1: "requests", 2: "tokens", 3: "concurrency"}


class RateLimiter(Protocol):
    async def acquire(self, limits: Limits, request_id: str) -> Decision: ...

    async def release(self, limits: Limits, request_id: str, tokens: int) -> None: ...


# --- Redis ---------------------------------------------------------------------------------------

# Token buckets (requests, tokens) refill continuously over a minute; concurrency is a sorted
# set of request ids scored by lease deadline, so that a dead gateway's leases expire.
# The tokens bucket is debited after the response (the count is only known then) and may go
# negative; requests are refused while it is not positive.
#
# The scripts are built from Lua fragments that ``apps.gateway.governance`` composes with the
# budget's into one script per request phase. A fragment reads its keys and arguments from the
# locals ``RL_KEYS`` (requests, tokens, concurrency) and ``RL_ARGV`` (rpm, tpm, concurrency,
# request id, lease seconds; on release: tokens), and the clock from ``now``.
CLOCK = """
local t = redis.call('TIME')
local now = tonumber(t[1]) + tonumber(t[2]) / 1000000
"""

# rl_check() -> refusal code (0: allowed), retry ms, the requests bucket's value once debited.
# Writes nothing but the cleanup of expired concurrency leases.
RL_FUNCTIONS = """
local function rl_check()
  local rpm, tpm, conc = tonumber(RL_ARGV[1]), tonumber(RL_ARGV[2]), tonumber(RL_ARGV[3])
  if conc > 0 then
    redis.call('ZREMRANGEBYSCORE', RL_KEYS[3], '-inf', now)
    if redis.call('ZCARD', RL_KEYS[3]) >= conc then return 3, 1000, 0 end
  end
  if tpm > 0 then
    local b = redis.call('HMGET', RL_KEYS[2], 'v', 't')
    local v = tonumber(b[1]) or tpm
    local ts = tonumber(b[2]) or now
    v = math.min(tpm, v + (now - ts) * tpm / 60)
    if v <= 0 then return 2, math.ceil((1 - v) * 60000 / tpm), 0 end
  end
  if rpm > 0 then
    local b = redis.call('HMGET', RL_KEYS[1], 'v', 't')
    local v = tonumber(b[1]) or rpm
    local ts = tonumber(b[2]) or now
    v = math.min(rpm, v + (now - ts) * rpm / 60)
    if v < 1 then return 1, math.ceil((1 - v) * 60000 / rpm), 0 end
    return 0, 0, v - 1
  end
  return 0, 0, 0
end
local function rl_apply(requests_left)
  local rpm, conc, lease = tonumber(RL_ARGV[1]), tonumber(RL_ARGV[3]), tonumber(RL_ARGV[5])
  if rpm > 0 then
    redis.call('HSET', RL_KEYS[1], 'v', tostring(requests_left), 't', tostring(now))
    redis.call('PEXPIRE', RL_KEYS[1], 120000)
  end
  if conc > 0 then
    redis.call('ZADD', RL_KEYS[3], now + lease, RL_ARGV[4])
    redis.call('PEXPIRE', RL_KEYS[3], (lease + 1) * 1000)
  end
end
"""

# RL_KEYS: tokens, concurrency; RL_ARGV: tpm, concurrency, request id, tokens.
RL_RELEASE = """
local function rl_release()
  local tpm, conc, tokens = tonumber(RL_ARGV[1]), tonumber(RL_ARGV[2]), tonumber(RL_ARGV[4])
  if conc > 0 then redis.call('ZREM', RL_KEYS[2], RL_ARGV[3]) end
  if tpm > 0 and tokens > 0 then
    local b = redis.call('HMGET', RL_KEYS[1], 'v', 't')
    local v = tonumber(b[1]) or tpm
    local ts = tonumber(b[2]) or now
    v = math.min(tpm, v + (now - ts) * tpm / 60) - tokens
    redis.call('HSET', RL_KEYS[1], 'v', tostring(v), 't', tostring(now))
    redis.call('PEXPIRE', RL_KEYS[1], 120000)
  end
end
"""

_ACQUIRE = (
    "local RL_KEYS, RL_ARGV = KEYS, ARGV"
    + CLOCK
    + RL_FUNCTIONS
    + """
local code, retry, left = rl_check()
if code ~= 0 then return {code, retry} end
rl_apply(left)
return {0, 0}
"""
)

_RELEASE = "local RL_KEYS, RL_ARGV = KEYS, ARGV" + CLOCK + RL_RELEASE + "rl_release()\nreturn 0\n"


def decision(code: int, retry_ms: int) -> Decision:
    """A script's refusal code and retry delay as a decision."""
    if code == 0:
        return ALLOW
    return Decision(False, _KINDS[code], retry_ms / 1000)


def limit_keys(prefix: str, key_id: int) -> list[str]:
    """The Redis keys of a key's requests and tokens buckets and its concurrency leases."""
    base = f"{prefix}{key_id}:"
    return [base + "req", base + "tok", base + "conc"]


def prefix() -> str:
    return settings.REDIS_PREFIX + "gw:rl:"


def _redis_url() -> str:
    url = settings.REDIS_URL
    assert url, "the Redis implementation is picked only when REDIS_URL is set"
    return url


class RedisRateLimiter:
    def __init__(self) -> None:
        self._redis = aioredis.Redis.from_url(_redis_url(), max_connections=64)
        self._prefix = prefix()
        self._acquire = self._redis.register_script(_ACQUIRE)
        self._release = self._redis.register_script(_RELEASE)

    def _keys(self, key_id: int) -> list[str]:
        return limit_keys(self._prefix, key_id)

    async def acquire(self, limits: Limits, request_id: str) -> Decision:
        code, retry_ms = await self._acquire(
            keys=self._keys(limits.key_id),
            args=[limits.rpm, limits.tpm, limits.concurrency, request_id, LEASE_S],
        )
        return decision(int(code), int(retry_ms))

    async def release(self, limits: Limits, request_id: str, tokens: int) -> None:
        if not (limits.tpm or limits.concurrency):
            return
        _, tok, conc = self._keys(limits.key_id)
        await self._release(
            keys=[tok, conc], args=[limits.tpm, limits.concurrency, request_id, tokens]
        )


# --- In-process (embedded mode) ----------------------------------------------------------------


@dataclass
class _Bucket:
    value: float
    at: float


@dataclass
class InProcessRateLimiter:
    """Same semantics as the Redis scripts, for one process. Mutated only under ``_lock``."""

    _buckets: dict[tuple[int, str], _Bucket] = field(default_factory=dict)
    _leases: dict[int, dict[str, float]] = field(default_factory=dict)
    _lock: threading.Lock = field(default_factory=threading.Lock)

    def _refill(self, key: tuple[int, str], per_minute: int, now: float) -> _Bucket:
        bucket = self._buckets.get(key)
        if bucket is None:
            bucket = self._buckets[key] = _Bucket(float(per_minute), now)
        bucket.value = min(per_minute, bucket.value + (now - bucket.at) * per_minute / 60)
        bucket.at = now
        return bucket

    async def acquire(self, limits: Limits, request_id: str) -> Decision:
        now = time.monotonic()
        with self._lock:
            leases = self._leases.setdefault(limits.key_id, {})
            if limits.concurrency:
                for rid in [r for r, deadline in leases.items() if deadline <= now]:
                    del leases[rid]
                if len(leases) >= limits.concurrency:
                    return Decision(False, "concurrency", 1.0)
            if limits.tpm:
                tok = self._refill((limits.key_id, "tok"), limits.tpm, now)
                if tok.value <= 0:
                    return Decision(False, "tokens", math.ceil((1 - tok.value) * 60 / limits.tpm))
            if limits.rpm:
                req = self._refill((limits.key_id, "req"), limits.rpm, now)
                if req.value < 1:
                    return Decision(False, "requests", (1 - req.value) * 60 / limits.rpm)
                req.value -= 1
            if limits.concurrency:
                leases[request_id] = now + LEASE_S
        return ALLOW

    def undo(self, limits: Limits, request_id: str) -> None:
        """Give back what ``acquire`` took (the request was refused by its budget)."""
        now = time.monotonic()
        with self._lock:
            if limits.concurrency:
                self._leases.get(limits.key_id, {}).pop(request_id, None)
            if limits.rpm:
                bucket = self._refill((limits.key_id, "req"), limits.rpm, now)
                bucket.value = min(limits.rpm, bucket.value + 1)

    async def release(self, limits: Limits, request_id: str, tokens: int) -> None:
        now = time.monotonic()
        with self._lock:
            if limits.concurrency:
                self._leases.get(limits.key_id, {}).pop(request_id, None)
            if limits.tpm and tokens > 0:
                self._refill((limits.key_id, "tok"), limits.tpm, now).value -= tokens


_in_process_limiter = InProcessRateLimiter()


def in_process_limiter() -> InProcessRateLimiter:
    """The process's own limiter (the embedded mode's)."""
    return _in_process_limiter


def rate_limiter() -> RateLimiter:
    """A new Redis limiter (one per gateway process and event loop), or the process's own."""
    if settings.REDIS_URL:
        return RedisRateLimiter()
    return _in_process_limiter

"""Monthly budgets (per API key and per organization), enforced before forwarding: the gateway
*reserves* a request's worst-case cost atomically, and *settles* it to the real cost after the
answer. Two implementations behind one small interface, like ``ratelimit``:

* Redis (production): one Lua script per reserve and per settle, atomic across every gateway.
* In-process (embedded mode only, ``REDIS_URL`` unset): the same semantics in memory.

Amounts are integers of pico-currency (1e-12): a price per million tokens of ``p`` is ``p``
micro-currency per token, so a request of ``t`` tokens costs ``t * round(p * 1e6)`` pico, exactly
(prices have at most 6 decimal places). The database stays the ledger (``apps.billing``);
these counters are the gateways' fast view of the month, fed by the billing task
(``BudgetControl``): prices, limits, a spend floor from the rollups, and blocks.

Guarantee: a request is forwarded only if ``spent + reserved + worst <= limit`` for its key's
and its organization's budget, and its ``worst`` stays reserved until it settles, so that
concurrent requests cannot all pass the edge together: spend ends at most the limit plus the
amount by which one request's real cost exceeded its estimate (its prompt estimate is its body
size in bytes, an upper bound for byte-level tokenizers; its completion is ``max_tokens``, else
the model code's context length). A gateway that dies holding reservations frees them after
``LEASE_S``. A key or an organization blocked by the billing task is refused at once by every
gateway (the block is read on each reserve). Months are calendar months, UTC: at the turn, the
new month's counters start empty and the old month's blocks no longer apply.
"""

from __future__ import annotations

import threading
import time
from dataclasses import dataclass, field
from decimal import Decimal
from typing import Protocol

import redis
import redis.asyncio as aioredis
from django.conf import settings

from apps.gateway.errors import GatewayError

# A reservation outlives its request by at most this long if its gateway dies mid-request.
LEASE_S = 900
# Period counters outlive their month by this long (for the billing task's reconciliation).
PERIOD_TTL_S = 40 * 86400
PICO = Decimal(10) ** 12


@dataclass(frozen=True, slots=True)
class Reservation:
    allowed: bool
    # Who refused ("key", "organization") and why ("blocked" by the billing task, "exhausted").
    scope: str = ""
    reason: str = ""
    # The amount reserved (pico); 0 when the model code has no price (nothing to settle).
    worst: int = 0


def period_of(moment: float | None = None) -> str:
    """The budget period (``YYYYMM``, UTC) of a POSIX time (default now)."""
    if moment is None:
        # Every governed request asks: the answer is kept for the rest of its UTC hour (a month
        # starts on an hour) instead of formatting the date each time.
        global _period, _period_until
        now = time.time()
        if now >= _period_until:
            _period = time.strftime("%Y%m", time.gmtime(now))
            _period_until = now - now % 3600 + 3600
        return _period
    return time.strftime("%Y%m", time.gmtime(moment))


_period, _period_until = "", 0.0  # the current period, valid until (POSIX)


def to_pico(amount: Decimal) -> int:
    return int((amount * PICO).to_integral_value())


def per_token_pico(price_per_million: Decimal) -> int:
    """A price per million tokens as pico-currency per token (exact to 6 decimal places)."""
    return int((price_per_million * 1_000_000).to_integral_value())


class BudgetGuard(Protocol):
    """What the gateway calls on the hot path."""

    async def reserve(
        self,
        *,
        key_id: int,
        org_id: int,
        model_code_id: int,
        request_id: str,
        prompt_estimate: int,
        max_tokens: int,
    ) -> Reservation: ...

    async def settle(
        self,
        *,
        key_id: int,
        org_id: int,
        model_code_id: int,
        request_id: str,
        prompt_tokens: int,
        completion_tokens: int,
    ) -> None: ...


class BudgetControl(Protocol):
    """What the billing task calls (synchronously) to feed and steer the gateways."""

    def set_price(self, model_code_id: int, input_pico: int, output_pico: int) -> None: ...

    def set_limit(self, scope: str, scope_id: int, limit_pico: int | None) -> None: ...

    def raise_spent(self, scope: str, scope_id: int, period: str, spent_pico: int) -> None: ...

    def set_blocked(self, scope: str, scope_id: int, period: str, blocked: bool) -> None: ...

    def spent(self, scope: str, scope_id: int, period: str) -> tuple[int, int]: ...


# --- Redis ---------------------------------------------------------------------------------------

# Numbers go back to Redis through string.format('%.0f'): Lua's default conversion keeps only
# 14 significant digits. The scripts are built from Lua fragments that
# ``apps.gateway.governance`` composes with the rate limiter's into one script per request
# phase; a fragment reads its keys and arguments from the locals ``BUD_KEYS`` and ``BUD_ARGV``
# and the clock from ``now``.
#
# bud_reserve() -> refusing scope (0: none, 1: key, 2: organization), exhausted (1) or blocked
# (0), the amount reserved. BUD_KEYS: price, then per scope (key, organization): limit,
# counters, amounts, deadlines, block. BUD_ARGV: request id, prompt estimate, max tokens, lease
# seconds, period TTL seconds. Refusing, it writes nothing but the release of expired leases.
BUD_RESERVE = """
local function bud_reserve()
  if redis.call('EXISTS', BUD_KEYS[6]) == 1 then return 1, 0, 0 end
  if redis.call('EXISTS', BUD_KEYS[11]) == 1 then return 2, 0, 0 end
  local p = redis.call('HMGET', BUD_KEYS[1], 'in', 'out')
  local worst = (tonumber(p[1]) or 0) * tonumber(BUD_ARGV[2])
    + (tonumber(p[2]) or 0) * tonumber(BUD_ARGV[3])
  if worst <= 0 then return 0, 0, 0 end
  local limited = {}
  for i, b in ipairs({2, 7}) do
    local lim = tonumber(redis.call('GET', BUD_KEYS[b]))
    if lim then
      local s, r, d = BUD_KEYS[b + 1], BUD_KEYS[b + 2], BUD_KEYS[b + 3]
      local old = redis.call('ZRANGEBYSCORE', d, '-inf', now)
      for _, id in ipairs(old) do
        local a = tonumber(redis.call('HGET', r, id)) or 0
        redis.call('HINCRBYFLOAT', s, 'reserved', string.format('%.0f', -a))
        redis.call('HDEL', r, id)
      end
      if #old > 0 then redis.call('ZREMRANGEBYSCORE', d, '-inf', now) end
      local h = redis.call('HMGET', s, 'spent', 'reserved')
      if (tonumber(h[1]) or 0) + (tonumber(h[2]) or 0) + worst > lim then return i, 1, 0 end
      limited[#limited + 1] = b
    end
  end
  for _, b in ipairs(limited) do
    local s, r, d = BUD_KEYS[b + 1], BUD_KEYS[b + 2], BUD_KEYS[b + 3]
    redis.call('HINCRBYFLOAT', s, 'reserved', string.format('%.0f', worst))
    redis.call('HSET', r, BUD_ARGV[1], string.format('%.0f', worst))
    redis.call('ZADD', d, now + tonumber(BUD_ARGV[4]), BUD_ARGV[1])
    for _, k in ipairs({s, r, d}) do redis.call('EXPIRE', k, BUD_ARGV[5]) end
  end
  return 0, 0, worst
end
"""

# bud_settle(): count the real cost, free the reservation. BUD_KEYS: price, then per scope:
# counters, amounts, deadlines. BUD_ARGV: request id, prompt and completion tokens, period TTL.
BUD_SETTLE = """
local function bud_settle()
  local p = redis.call('HMGET', BUD_KEYS[1], 'in', 'out')
  local cost = (tonumber(p[1]) or 0) * tonumber(BUD_ARGV[2])
    + (tonumber(p[2]) or 0) * tonumber(BUD_ARGV[3])
  for _, b in ipairs({2, 5}) do
    local s, r, d = BUD_KEYS[b], BUD_KEYS[b + 1], BUD_KEYS[b + 2]
    local held = tonumber(redis.call('HGET', r, BUD_ARGV[1]))
    if held then
      redis.call('HINCRBYFLOAT', s, 'reserved', string.format('%.0f', -held))
      redis.call('HDEL', r, BUD_ARGV[1])
      redis.call('ZREM', d, BUD_ARGV[1])
    end
    if cost > 0 then redis.call('HINCRBYFLOAT', s, 'spent', string.format('%.0f', cost)) end
    redis.call('EXPIRE', s, BUD_ARGV[4])
  end
end
"""

_CLOCK = """
local t = redis.call('TIME')
local now = tonumber(t[1]) + tonumber(t[2]) / 1000000
"""

_RESERVE = (
    "local BUD_KEYS, BUD_ARGV = KEYS, ARGV"
    + _CLOCK
    + BUD_RESERVE
    + "local scope, exhausted, worst = bud_reserve()\nreturn {scope, exhausted, worst}\n"
)

_SETTLE = "local BUD_KEYS, BUD_ARGV = KEYS, ARGV" + BUD_SETTLE + "bud_settle()\nreturn 0\n"

# The billing task's spend floor: the database's month-to-date spend never lowers the counter
# (settled requests not yet rolled up are in it), but raises it (a dead gateway's requests).
_RAISE_SPENT = """
local v = tonumber(redis.call('HGET', KEYS[1], 'spent')) or 0
if tonumber(ARGV[1]) > v then redis.call('HSET', KEYS[1], 'spent', ARGV[1]) end
redis.call('EXPIRE', KEYS[1], ARGV[2])
return 0
"""


def prefix() -> str:
    return settings.REDIS_PREFIX + "gw:bud:"


def _names(prefix: str, scope: str, scope_id: int, period: str) -> list[str]:
    base = f"{prefix}{scope[0]}:{scope_id}"
    return [
        f"{base}:lim",
        f"{base}:{period}:s",
        f"{base}:{period}:r",
        f"{base}:{period}:d",
        f"{base}:{period}:blk",
    ]


def reserve_keys(
    prefix: str, key_id: int, org_id: int, model_code_id: int, period: str
) -> list[str]:
    """BUD_KEYS of a reservation."""
    keys = [f"{prefix}price:{model_code_id}"]
    keys += _names(prefix, "key", key_id, period)
    keys += _names(prefix, "organization", org_id, period)
    return keys


def settle_keys(
    prefix: str, key_id: int, org_id: int, model_code_id: int, period: str
) -> list[str]:
    """BUD_KEYS of a settlement."""
    keys = [f"{prefix}price:{model_code_id}"]
    keys += _names(prefix, "key", key_id, period)[1:4]
    keys += _names(prefix, "organization", org_id, period)[1:4]
    return keys


def reservation(scope: int, exhausted: int, worst: int) -> Reservation:
    """A reservation from ``bud_reserve``'s three results."""
    if scope:
        return Reservation(
            False, "key" if scope == 1 else "organization", "exhausted" if exhausted else "blocked"
        )
    return Reservation(True, worst=worst)


class RedisBudgetGuard:
    def __init__(self) -> None:
        url = settings.REDIS_URL
        assert url, "the Redis implementation is picked only when REDIS_URL is set"
        self._redis = aioredis.Redis.from_url(url, max_connections=64)
        self._prefix = prefix()
        self._reserve = self._redis.register_script(_RESERVE)
        self._settle = self._redis.register_script(_SETTLE)

    async def reserve(
        self,
        *,
        key_id: int,
        org_id: int,
        model_code_id: int,
        request_id: str,
        prompt_estimate: int,
        max_tokens: int,
    ) -> Reservation:
        keys = reserve_keys(self._prefix, key_id, org_id, model_code_id, period_of())
        scope, exhausted, worst = await self._reserve(
            keys=keys,
            args=[request_id, prompt_estimate, max_tokens, LEASE_S, PERIOD_TTL_S],
        )
        return reservation(int(scope), int(exhausted), int(worst))

    async def settle(
        self,
        *,
        key_id: int,
        org_id: int,
        model_code_id: int,
        request_id: str,
        prompt_tokens: int,
        completion_tokens: int,
    ) -> None:
        keys = settle_keys(self._prefix, key_id, org_id, model_code_id, period_of())
        await self._settle(
            keys=keys, args=[request_id, prompt_tokens, completion_tokens, PERIOD_TTL_S]
        )


class RedisBudgetControl:
    def __init__(self) -> None:
        url = settings.REDIS_URL
        assert url, "the Redis implementation is picked only when REDIS_URL is set"
        self._redis = redis.Redis.from_url(url)
        self._prefix = prefix()
        self._raise = self._redis.register_script(_RAISE_SPENT)

    def set_price(self, model_code_id: int, input_pico: int, output_pico: int) -> None:
        self._redis.hset(
            f"{self._prefix}price:{model_code_id}", mapping={"in": input_pico, "out": output_pico}
        )

    def set_limit(self, scope: str, scope_id: int, limit_pico: int | None) -> None:
        name = _names(self._prefix, scope, scope_id, "")[0]
        if limit_pico is None:
            self._redis.delete(name)
        else:
            self._redis.set(name, limit_pico)

    def raise_spent(self, scope: str, scope_id: int, period: str, spent_pico: int) -> None:
        name = _names(self._prefix, scope, scope_id, period)[1]
        self._raise(keys=[name], args=[spent_pico, PERIOD_TTL_S])

    def set_blocked(self, scope: str, scope_id: int, period: str, blocked: bool) -> None:
        name = _names(self._prefix, scope, scope_id, period)[4]
        if blocked:
            self._redis.set(name, 1, ex=PERIOD_TTL_S)
        else:
            self._redis.delete(name)

    def spent(self, scope: str, scope_id: int, period: str) -> tuple[int, int]:
        values = self._redis.hmget(
            _names(self._prefix, scope, scope_id, period)[1], ["spent", "reserved"]
        )
        return tuple(int(float(v or 0)) for v in values)  # type: ignore[return-value]


# --- In-process (embedded mode) ----------------------------------------------------------------


@dataclass
class _Counters:
    spent: int = 0
    reserved: int = 0
    holds: dict[str, tuple[int, float]] = field(default_factory=dict)  # id -> (amount, deadline)


@dataclass
class InProcessBudgets:
    """Both interfaces, for one process (the embedded mode runs gateway and worker together).
    Mutated only under ``_lock``; same semantics as the scripts."""

    _prices: dict[int, tuple[int, int]] = field(default_factory=dict)
    _limits: dict[tuple[str, int], int] = field(default_factory=dict)
    _counters: dict[tuple[str, int, str], _Counters] = field(default_factory=dict)
    _blocked: set[tuple[str, int, str]] = field(default_factory=set)
    _lock: threading.Lock = field(default_factory=threading.Lock)

    def _of(self, scope: str, scope_id: int, period: str) -> _Counters:
        return self._counters.setdefault((scope, scope_id, period), _Counters())

    async def reserve(
        self,
        *,
        key_id: int,
        org_id: int,
        model_code_id: int,
        request_id: str,
        prompt_estimate: int,
        max_tokens: int,
    ) -> Reservation:
        period, now = period_of(), time.monotonic()
        scopes = [("key", key_id), ("organization", org_id)]
        with self._lock:
            for scope, scope_id in scopes:
                if (scope, scope_id, period) in self._blocked:
                    return Reservation(False, scope, "blocked")
            pin, pout = self._prices.get(model_code_id, (0, 0))
            worst = pin * prompt_estimate + pout * max_tokens
            if worst <= 0:
                return Reservation(True)
            limited = []
            for scope, scope_id in scopes:
                limit = self._limits.get((scope, scope_id))
                if limit is None:
                    continue
                counters = self._of(scope, scope_id, period)
                for rid in [r for r, (_, d) in counters.holds.items() if d <= now]:
                    counters.reserved -= counters.holds.pop(rid)[0]
                if counters.spent + counters.reserved + worst > limit:
                    return Reservation(False, scope, "exhausted")
                limited.append(counters)
            for counters in limited:
                counters.reserved += worst
                counters.holds[request_id] = (worst, now + LEASE_S)
        return Reservation(True, worst=worst)

    async def settle(
        self,
        *,
        key_id: int,
        org_id: int,
        model_code_id: int,
        request_id: str,
        prompt_tokens: int,
        completion_tokens: int,
    ) -> None:
        period = period_of()
        with self._lock:
            pin, pout = self._prices.get(model_code_id, (0, 0))
            cost = pin * prompt_tokens + pout * completion_tokens
            for scope, scope_id in (("key", key_id), ("organization", org_id)):
                counters = self._of(scope, scope_id, period)
                held = counters.holds.pop(request_id, None)
                if held is not None:
                    counters.reserved -= held[0]
                counters.spent += max(0, cost)

    def set_price(self, model_code_id: int, input_pico: int, output_pico: int) -> None:
        with self._lock:
            self._prices[model_code_id] = (input_pico, output_pico)

    def set_limit(self, scope: str, scope_id: int, limit_pico: int | None) -> None:
        with self._lock:
            if limit_pico is None:
                self._limits.pop((scope, scope_id), None)
            else:
                self._limits[(scope, scope_id)] = limit_pico

    def raise_spent(self, scope: str, scope_id: int, period: str, spent_pico: int) -> None:
        with self._lock:
            counters = self._of(scope, scope_id, period)
            counters.spent = max(counters.spent, spent_pico)

    def set_blocked(self, scope: str, scope_id: int, period: str, blocked: bool) -> None:
        with self._lock:
            if blocked:
                self._blocked.add((scope, scope_id, period))
            else:
                self._blocked.discard((scope, scope_id, period))

    def spent(self, scope: str, scope_id: int, period: str) -> tuple[int, int]:
        with self._lock:
            counters = self._of(scope, scope_id, period)
            return counters.spent, counters.reserved


_in_process = InProcessBudgets()


def budget_guard() -> BudgetGuard:
    """A new Redis guard (one per gateway process and event loop), or the process's own."""
    if settings.REDIS_URL:
        return RedisBudgetGuard()
    return _in_process


def budget_control() -> BudgetControl:
    """The billing task's handle on the same counters."""
    if settings.REDIS_URL:
        return RedisBudgetControl()
    return _in_process


# --- The gateway's side ------------------------------------------------------------------------


def worst_case_tokens(data: dict[str, object], context: int, endpoint: str) -> int:
    """The completion tokens a request may be billed for: its ``max_tokens`` (or
    ``max_completion_tokens``, checked already), else the model code's context length; none
    for embeddings."""
    if endpoint == "embeddings":
        return 0
    for name in ("max_completion_tokens", "max_tokens", "max_output_tokens"):
        value = data.get(name)
        if isinstance(value, int) and not isinstance(value, bool) and value > 0:
            return value
    return context


def quota_error(reservation: Reservation) -> GatewayError:
    """The refusal of a request its budget cannot cover: 429 ``insufficient_quota``."""
    whose = "API key's" if reservation.scope == "key" else "organization's"
    why = (
        "is blocked by billing" if reservation.reason == "blocked" else "cannot cover this request"
    )
    return GatewayError(
        "insufficient_quota",
        f"This {whose} monthly budget {why}. Raise the budget or wait for next month.",
    )

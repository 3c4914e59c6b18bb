"""A request's governance in two steps: *admit* (its key's rate limits and its budget
reservation) before it is forwarded, *finish* (release its concurrency lease, debit its tokens,
settle its cost) once it ends.

In production (Redis) each step is **one** script call, atomic across every gateway: the rate
limiter's and the budget's Lua fragments (``apps.gateway.ratelimit``, ``apps.gateway.budget``)
composed into one script, so that a governed request costs one Redis round trip before it is
forwarded instead of two, and one after instead of two. A request refused by its budget
consumes none of its rate limits (the script writes only once both allow). The finish is
usually written with the request's final usage record, in one script (``finish_recorded``):
a request then makes two Redis round trips in all. A request with no
rate limits and an unpriced model code still makes the admit call (a block by the billing task
must apply) and no finish call.

In-process (embedded mode) the same steps call the in-process limiter and budgets.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Protocol

from django.conf import settings

from apps.gateway import budget, ratelimit
from apps.gateway.budget import LEASE_S as BUDGET_LEASE_S
from apps.gateway.budget import PERIOD_TTL_S, Reservation, period_of
from apps.gateway.errors import GatewayError, retry_after
from apps.gateway.ratelimit import LEASE_S as RATE_LEASE_S
from apps.gateway.ratelimit import Decision, Limits
from apps.gateway.redis_pipe import Script, encode_bulk, shared_pipe

# KEYS: the rate limiter's three, then the reservation's eleven. ARGV: rpm, tpm, concurrency,
# request id, lease; prompt estimate, max tokens, budget lease, period TTL.
_ADMIT = (
    "local RL_KEYS = {KEYS[1], KEYS[2], KEYS[3]}\n"
    "local BUD_KEYS = {unpack(KEYS, 4, 14)}\n"
    "local RL_ARGV = {ARGV[1], ARGV[2], ARGV[3], ARGV[4], ARGV[5]}\n"
    "local BUD_ARGV = {ARGV[4], ARGV[6], ARGV[7], ARGV[8], ARGV[9]}\n"
    + ratelimit.CLOCK
    + ratelimit.RL_FUNCTIONS
    + budget.BUD_RESERVE
    + """
local code, retry, left = rl_check()
if code ~= 0 then return {code, retry, 0, 0, 0} end
local scope, exhausted, worst = bud_reserve()
if scope ~= 0 then return {0, 0, scope, exhausted, 0} end
rl_apply(left)
return {0, 0, 0, 0, worst}
"""
)

# A request is finished at most once, by whichever script comes first: each starts with
# ``SET <prefix>fin:<request id> 1 NX EX FINISH_MARK_S`` and does nothing if the marker is there.
# So a finish whose reply was lost can be sent again (``finish`` after a failed
# ``finish_recorded``) without releasing or settling twice, and a refusal and its answer's
# finish exclude each other (``AccountedSend._refuse``). The marker outlives the lease (after it,
# there is nothing left to release).
FINISH_MARK_S = max(RATE_LEASE_S, BUDGET_LEASE_S)


def _finish_lua(offset: int, then: str = "") -> str:
    """The finish script, its keys from ``KEYS[offset + 1]`` on: the rate limiter's tokens and
    concurrency, the settlement's seven, the request's finish marker. ARGV: tpm, concurrency,
    request id, tokens; prompt tokens, completion tokens, period TTL, settle (1/0), marker TTL.
    ``then`` runs after the finish, in the same script. Returns 0 if it finished the request, 1
    (doing nothing) if the request was finished already."""
    return (
        f"local RL_KEYS = {{KEYS[{offset + 1}], KEYS[{offset + 2}]}}\n"
        f"local BUD_KEYS = {{unpack(KEYS, {offset + 3}, {offset + 9})}}\n"
        "local RL_ARGV = {ARGV[1], ARGV[2], ARGV[3], ARGV[4]}\n"
        "local BUD_ARGV = {ARGV[3], ARGV[5], ARGV[6], ARGV[7]}\n"
        + ratelimit.CLOCK
        + ratelimit.RL_RELEASE
        + budget.BUD_SETTLE
        + f"if not redis.call('SET', KEYS[{offset + 10}], '1', 'NX', 'EX', ARGV[9]) then"
        " return 1 end\n"
        "rl_release()\n"
        "if ARGV[8] == '1' then bud_settle() end\n" + then + "return 0\n"
    )


_FINISH = _finish_lua(0)

# The finish and the request's final usage record in one script (one round trip instead of
# two, atomic: the record is in the stream, its checkpoint gone, if and only if the lease is
# released, the cost settled and the marker set). KEYS: the usage stream, the gateway's
# in-flight hash, then _FINISH's ten. ARGV: _FINISH's nine, then the record. Returns 0 if it
# wrote, 1 (writing nothing) if the request was finished already: its final record is the one
# written by whoever finished it.
_FINISH_RECORDED = _finish_lua(
    2, "redis.call('XADD', KEYS[1], '*', 'r', ARGV[10])\nredis.call('HDEL', KEYS[2], ARGV[3])\n"
)


@dataclass(frozen=True, slots=True)
class Ticket:
    """What an admitted request holds until it finishes."""

    limits: Limits
    org_id: int
    model_code_id: int
    request_id: str
    reserved: bool  # a budget reservation to settle (the model code is priced)
    period: str  # the budget period it reserved in

    @property
    def pending(self) -> bool:
        return self.reserved or bool(self.limits.tpm or self.limits.concurrency)


class Backend(Protocol):
    async def admit(
        self,
        limits: Limits,
        *,
        org_id: int,
        model_code_id: int,
        request_id: str,
        prompt_estimate: int,
        max_tokens: int,
        period: str,
    ) -> tuple[Decision, Reservation]: ...

    async def finish(self, ticket: Ticket, prompt_tokens: int, completion_tokens: int) -> None: ...


_ADMIT_SCRIPT, _FINISH_SCRIPT = Script(_ADMIT), Script(_FINISH)
Prepared = tuple[int, bytes]  # keys encoded once: (count, encode_bulk(keys))
_FINISH_RECORDED_SCRIPT = Script(_FINISH_RECORDED)
_NAMES_MAX = 10_000


class RedisGovernance:
    """Both steps on the event loop's pipelined connection (``apps.gateway.redis_pipe``)."""

    def __init__(self) -> None:
        url = settings.REDIS_URL
        assert url, "the Redis implementation is picked only when REDIS_URL is set"
        self._url: str = url
        self.url = url
        self._rl = ratelimit.prefix()
        self._bud = budget.prefix()
        self._fin = settings.REDIS_PREFIX + "gw:fin:"
        # (key, organization, model code, period) -> the two scripts' keys, encoded once.
        self._names: dict[tuple[int, int, int, str], tuple[Prepared, Prepared]] = {}

    def _keys(
        self, key_id: int, org_id: int, model_code_id: int, period: str
    ) -> tuple[Prepared, Prepared]:
        found = self._names.get((key_id, org_id, model_code_id, period))
        if found is None:
            if len(self._names) >= _NAMES_MAX:
                self._names.clear()
            limit = ratelimit.limit_keys(self._rl, key_id)
            admit = limit + budget.reserve_keys(self._bud, key_id, org_id, model_code_id, period)
            finish = limit[1:] + budget.settle_keys(
                self._bud, key_id, org_id, model_code_id, period
            )
            found = ((len(admit), encode_bulk(admit)), (len(finish), encode_bulk(finish)))
            self._names[(key_id, org_id, model_code_id, period)] = found
        return found

    async def admit(
        self,
        limits: Limits,
        *,
        org_id: int,
        model_code_id: int,
        request_id: str,
        prompt_estimate: int,
        max_tokens: int,
        period: str,
    ) -> tuple[Decision, Reservation]:
        keys = self._keys(limits.key_id, org_id, model_code_id, period)[0]
        code, retry_ms, scope, exhausted, worst = await shared_pipe(self._url).evalsha(
            _ADMIT_SCRIPT,
            keys,
            [
                limits.rpm,
                limits.tpm,
                limits.concurrency,
                request_id,
                RATE_LEASE_S,
                prompt_estimate,
                max_tokens,
                BUDGET_LEASE_S,
                PERIOD_TTL_S,
            ],
        )
        return (
            ratelimit.decision(int(code), int(retry_ms)),
            budget.reservation(int(scope), int(exhausted), int(worst)),
        )

    @staticmethod
    def _finish_args(ticket: Ticket, prompt_tokens: int, completion_tokens: int) -> list[Any]:
        limits = ticket.limits
        return [
            limits.tpm,
            limits.concurrency,
            ticket.request_id,
            prompt_tokens + completion_tokens,
            prompt_tokens,
            completion_tokens,
            PERIOD_TTL_S,
            1 if ticket.reserved else 0,
            FINISH_MARK_S,
        ]

    def _finish_keys(self, ticket: Ticket, head: bytes = b"", heads: int = 0) -> Prepared:
        """The finish's keys (after ``heads`` keys encoded as ``head``), the request's marker
        last: the shared part encoded once, the marker per request."""
        limits = ticket.limits
        count, blob = self._keys(limits.key_id, ticket.org_id, ticket.model_code_id, ticket.period)[
            1
        ]
        marker = encode_bulk([self._fin + ticket.request_id])
        return heads + count + 1, head + blob + marker

    async def finish(self, ticket: Ticket, prompt_tokens: int, completion_tokens: int) -> None:
        await shared_pipe(self._url).evalsha(
            _FINISH_SCRIPT,
            self._finish_keys(ticket),
            self._finish_args(ticket, prompt_tokens, completion_tokens),
        )

    async def finish_recorded(
        self,
        ticket: Ticket,
        prompt_tokens: int,
        completion_tokens: int,
        target: tuple[str, str],
        record: bytes,
    ) -> bool:
        """``finish`` and the final record's write (``target``: the usage stream and the
        gateway's in-flight hash) in one script; False (nothing written) if the request was
        finished already."""
        args = self._finish_args(ticket, prompt_tokens, completion_tokens)
        args.append(record)
        prepared = self._finish_keys(ticket, encode_bulk(target), 2)
        done = await shared_pipe(self._url).evalsha(_FINISH_RECORDED_SCRIPT, prepared, args)
        return int(done) == 0


class InProcessGovernance:
    """The embedded mode's: the in-process limiter and budgets, in the same order."""

    def __init__(self) -> None:
        self._limiter = ratelimit.in_process_limiter()
        self._budgets = budget.budget_guard()

    async def admit(
        self,
        limits: Limits,
        *,
        org_id: int,
        model_code_id: int,
        request_id: str,
        prompt_estimate: int,
        max_tokens: int,
        period: str,
    ) -> tuple[Decision, Reservation]:
        decision = ratelimit.ALLOW
        if limits.any:
            decision = await self._limiter.acquire(limits, request_id)
            if not decision.allowed:
                return decision, Reservation(True)
        found = await self._budgets.reserve(
            key_id=limits.key_id,
            org_id=org_id,
            model_code_id=model_code_id,
            request_id=request_id,
            prompt_estimate=prompt_estimate,
            max_tokens=max_tokens,
        )
        if not found.allowed and limits.any:
            self._limiter.undo(limits, request_id)  # as the script: a refusal consumes nothing
        return decision, found

    async def finish(self, ticket: Ticket, prompt_tokens: int, completion_tokens: int) -> None:
        limits = ticket.limits
        if limits.any:
            await self._limiter.release(
                limits, ticket.request_id, prompt_tokens + completion_tokens
            )
        if ticket.reserved:
            await self._budgets.settle(
                key_id=limits.key_id,
                org_id=ticket.org_id,
                model_code_id=ticket.model_code_id,
                request_id=ticket.request_id,
                prompt_tokens=prompt_tokens,
                completion_tokens=completion_tokens,
            )


class Governance:
    """One per gateway process (``open`` inside its event loop)."""

    def __init__(self) -> None:
        self.backend: Backend | None = None

    def open(self) -> None:
        self.backend = RedisGovernance() if settings.REDIS_URL else InProcessGovernance()

    async def admit(
        self,
        limits: Limits,
        *,
        org_id: int,
        model_code_id: int,
        request_id: str,
        body_bytes: int,
        completion_tokens: int,
    ) -> Ticket:
        """Take the request's rate limits and reserve its worst case (prompt estimate: its body
        size; completion: ``completion_tokens``), or raise ``GatewayError``:
        ``rate_limit_exceeded`` (with ``Retry-After``) or ``insufficient_quota``."""
        assert self.backend is not None
        period = period_of()
        decision, found = await self.backend.admit(
            limits,
            org_id=org_id,
            model_code_id=model_code_id,
            request_id=request_id,
            prompt_estimate=body_bytes,
            max_tokens=completion_tokens,
            period=period,
        )
        if not decision.allowed:
            raise GatewayError(
                "rate_limit_exceeded",
                f"Rate limit reached for this API key ({decision.limit}). "
                f"Retry in {decision.retry_after_s:.1f}s.",
                headers=retry_after(decision.retry_after_s),
            )
        if not found.allowed:
            raise budget.quota_error(found)
        return Ticket(limits, org_id, model_code_id, request_id, bool(found.worst), period)

    async def finish(self, ticket: Ticket, prompt_tokens: int, completion_tokens: int) -> None:
        """Release the request's lease, debit its tokens, settle its cost (one call); in Redis
        at most once per request (a no-op if ``finish_recorded`` or an earlier call did it)."""
        if ticket.pending and self.backend is not None:
            await self.backend.finish(ticket, prompt_tokens, completion_tokens)

    def can_record(self, ticket: Ticket, url: str) -> bool:
        """Whether ``finish_recorded`` can write the finish and the final record together: a
        finish to do, and the usage buffer on the Redis of the governance (``url``)."""
        backend = self.backend
        return ticket.pending and isinstance(backend, RedisGovernance) and backend.url == url

    async def finish_recorded(
        self,
        ticket: Ticket,
        prompt_tokens: int,
        completion_tokens: int,
        target: tuple[str, str],
        record: bytes,
    ) -> bool:
        """``finish`` and the request's final usage record, written to ``target`` (the usage
        stream, the gateway's in-flight hash), in one atomic script: one round trip. Only when
        ``can_record``. True if it wrote both; False, writing nothing, if the request was
        finished already (by an earlier script whose reply was lost: its record is the one
        written). At most once, through the finish marker shared with ``finish``: if it raises,
        whether it ran is unknown, so the caller may write the record again alone (harmless:
        the flush is idempotent by request id) and must call ``finish`` (a no-op if this ran)."""
        assert isinstance(self.backend, RedisGovernance)
        return await self.backend.finish_recorded(
            ticket, prompt_tokens, completion_tokens, target, record
        )

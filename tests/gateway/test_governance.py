"""Governance in one step each way (apps.gateway.governance): rate limits and the budget
reservation admitted together, released and settled together; Redis and in-process alike."""

from __future__ import annotations

import asyncio
import secrets
from typing import Any

import pytest
from django.conf import settings

from apps.gateway.budget import InProcessBudgets, RedisBudgetControl, period_of
from apps.gateway.errors import GatewayError
from apps.gateway.governance import Governance, InProcessGovernance, RedisGovernance
from apps.gateway.ratelimit import Limits


def _backends():  # type: ignore[no-untyped-def]
    def in_process() -> tuple[Any, Any]:
        governance = InProcessGovernance()
        budgets = InProcessBudgets()
        governance._budgets = budgets
        return governance, budgets

    yield pytest.param(in_process, id="in-process")
    if settings.REDIS_URL:
        yield pytest.param(lambda: (RedisGovernance(), RedisBudgetControl()), id="redis")


def _ids() -> tuple[int, int, int]:
    """A fresh key, organization and model code (Redis outlives a test)."""
    base = secrets.randbelow(10**9) + 10**6
    return base, base + 1, base + 2


def _governance(backend: Any) -> Governance:
    governance = Governance()
    governance.backend = backend
    return governance


async def _admit(governance: Governance, limits: Limits, org: int, model: int, rid: str) -> Any:
    return await governance.admit(
        limits, org_id=org, model_code_id=model, request_id=rid, body_bytes=10,
        completion_tokens=10,
    )  # fmt: skip


@pytest.mark.parametrize("make", list(_backends()))
def test_a_request_its_budget_refuses_consumes_none_of_its_rate_limits(make):
    backend, control = make()
    key, org, model = _ids()
    control.set_price(model, 1_000_000, 2_000_000)  # worst case 3e7 pico a request
    control.set_limit("key", key, 30_000_000)  # room for one
    limits = Limits(key, rpm=2, concurrency=2)
    governance = _governance(backend)

    async def run() -> list[str]:
        codes = []
        for i in range(3):
            try:
                await _admit(governance, limits, org, model, f"r{i}")
                codes.append("ok")
            except GatewayError as exc:
                codes.append(exc.code)
        return codes

    # The first is admitted; the second is refused by the budget and takes neither a request
    # nor a concurrency slot, so the third meets the same refusal, not the rate limit.
    assert asyncio.run(run()) == ["ok", "insufficient_quota", "insufficient_quota"]
    assert control.spent("key", key, period_of()) == (0, 30_000_000)


@pytest.mark.parametrize("make", list(_backends()))
def test_finishing_releases_the_lease_and_settles_the_real_cost_at_once(make):
    backend, control = make()
    key, org, model = _ids()
    control.set_price(model, 1_000_000, 2_000_000)
    control.set_limit("key", key, 10**12)
    limits = Limits(key, tpm=1_000, concurrency=1)
    governance = _governance(backend)

    async def run() -> tuple[str, str]:
        ticket = await _admit(governance, limits, org, model, "a")
        try:
            await _admit(governance, limits, org, model, "b")
            second = "ok"
        except GatewayError as exc:
            second = exc.code
        await governance.finish(ticket, 3, 4)
        await _admit(governance, limits, org, model, "c")
        return second, "ok"

    second, third = asyncio.run(run())

    assert (second, third) == ("rate_limit_exceeded", "ok")
    # a settled (3 * 1e6 + 4 * 2e6 = 11e6 pico); c reserved its worst case (3e7).
    assert control.spent("key", key, period_of()) == (11_000_000, 30_000_000)


@pytest.mark.parametrize("make", list(_backends()))
def test_a_blocked_organization_is_refused_even_with_no_price_and_no_limits(make):
    backend, control = make()
    key, org, model = _ids()
    control.set_blocked("organization", org, period_of(), True)
    governance = _governance(backend)

    with pytest.raises(GatewayError) as refused:
        asyncio.run(_admit(governance, Limits(key), org, model, "x"))

    assert refused.value.code == "insufficient_quota"
    assert "organization's monthly budget is blocked" in refused.value.message


@pytest.mark.skipif(not settings.REDIS_URL, reason="the Redis backend writes the record itself")
def test_finishing_with_the_final_record_releases_settles_and_records_in_one_script():
    import redis

    from apps.gateway.redis_pipe import close_shared
    from apps.gateway.usage_buffer import RedisUsageBuffer

    # Given an admitted request holding the key's one concurrency slot, with a checkpoint
    key, org, model = _ids()
    control = RedisBudgetControl()
    control.set_price(model, 1_000_000, 2_000_000)
    control.set_limit("key", key, 10**12)
    limits = Limits(key, tpm=1_000, concurrency=1)
    governance = Governance()
    governance.open()
    buffer = RedisUsageBuffer()
    gateway_id = f"gw-{secrets.token_hex(3)}"
    url, stream, inflight = buffer.final_target(gateway_id)  # type: ignore[misc]
    request_id = f"req_{secrets.token_hex(4)}"
    record = b'{"request_id":"%s","final":true}' % request_id.encode()

    async def run() -> tuple[bool, str]:
        ticket = await _admit(governance, limits, org, model, request_id)
        await buffer.write(gateway_id=gateway_id, finals={}, checkpoints={request_id: b"cp"})
        fused = governance.can_record(ticket, url)
        # When it finishes together with its final usage record
        await governance.finish_recorded(ticket, 3, 4, (stream, inflight), record)
        try:
            await _admit(governance, limits, org, model, request_id + "b")
            after = "ok"
        except GatewayError as exc:
            after = exc.code
        await close_shared()
        return fused, after

    fused, after = asyncio.run(run())

    # Then the slot is free again, the real cost is settled (3e6 + 8e6 pico; the next request
    # reserved its worst case, 3e7), the record is in the stream and its checkpoint is gone
    client = redis.Redis.from_url(settings.REDIS_URL)
    assert fused and after == "ok"
    assert control.spent("key", key, period_of()) == (11_000_000, 30_000_000)
    assert record in [fields[b"r"] for _id, fields in client.xrange(stream)]
    assert client.hget(inflight, request_id) is None


def test_it_does_not_fuse_the_finish_with_a_record_on_another_redis_or_in_process():
    key, org, model = _ids()
    in_process = _governance(InProcessGovernance())
    ticket = asyncio.run(_admit(in_process, Limits(key, tpm=500), org, model, "x"))

    assert not in_process.can_record(ticket, "redis://127.0.0.1:6379/0")
    if settings.REDIS_URL:
        redis_governance = _governance(RedisGovernance())
        assert redis_governance.can_record(ticket, settings.REDIS_URL)
        assert not redis_governance.can_record(ticket, "redis://elsewhere.invalid:6379/0")


@pytest.mark.skipif(not settings.REDIS_URL, reason="the finish marker is the Redis backend's")
def test_a_request_is_finished_at_most_once_whichever_script_comes_first():
    from apps.gateway.redis_pipe import close_shared

    # Given an admitted request finished with its final usage record
    key, org, model = _ids()
    control = RedisBudgetControl()
    control.set_price(model, 1_000_000, 2_000_000)
    control.set_limit("key", key, 10**12)
    limits = Limits(key, tpm=1_000, concurrency=2)
    governance = Governance()
    governance.open()
    stream = f"test:stream:{secrets.token_hex(3)}"
    inflight = f"test:inflight:{secrets.token_hex(3)}"
    request_id = f"req_{secrets.token_hex(4)}"

    async def run() -> tuple[bool, bool, bool]:
        ticket = await _admit(governance, limits, org, model, request_id)
        first = await governance.finish_recorded(ticket, 3, 4, (stream, inflight), b"r1")
        # When the finish is sent again, separately and fused (a reply was lost)
        await governance.finish(ticket, 3, 4)
        again = await governance.finish_recorded(ticket, 3, 0, (stream, inflight), b"r2")
        other = await _admit(governance, limits, org, model, request_id + "b")
        await governance.finish(other, 1, 1)
        await close_shared()
        return first, again, other.reserved

    first, again, reserved = asyncio.run(run())

    # Then it was released and settled once (3e6 + 8e6 pico, plus the other's 1e6 + 2e6), and
    # the second fused script wrote no record
    import redis

    assert first and not again and reserved
    assert control.spent("key", key, period_of()) == (14_000_000, 0)
    assert [f[b"r"] for _id, f in redis.Redis.from_url(settings.REDIS_URL).xrange(stream)] == [
        b"r1"
    ]

"""Rate limiters and usage buffers: the Redis implementation and the in-process one (embedded
mode) behave the same."""

from __future__ import annotations

import asyncio

import pytest
from django.conf import settings

from apps.billing.models import UsageRecord
from apps.billing.services import usage_flush
from apps.gateway.backends import (
    InProcessRateLimiter,
    InProcessUsageBuffer,
    Limits,
    RedisRateLimiter,
    RedisUsageBuffer,
)


def _limiters():  # type: ignore[no-untyped-def]
    yield pytest.param(InProcessRateLimiter, id="in-process")
    if settings.REDIS_URL:
        yield pytest.param(RedisRateLimiter, id="redis")


def _buffers():  # type: ignore[no-untyped-def]
    yield pytest.param(InProcessUsageBuffer, id="in-process")
    if settings.REDIS_URL:
        yield pytest.param(RedisUsageBuffer, id="redis")


@pytest.mark.parametrize("make", list(_limiters()))
def test_the_limiter_refuses_past_the_request_rate(make):
    async def run():  # type: ignore[no-untyped-def]
        limiter = make()
        limits = Limits(key_id=101, rpm=3)
        return [await limiter.acquire(limits, f"r{i}") for i in range(4)]

    decisions = asyncio.run(run())

    assert [d.allowed for d in decisions] == [True, True, True, False]
    assert decisions[3].limit == "requests" and 0 < decisions[3].retry_after_s <= 20


@pytest.mark.parametrize("make", list(_limiters()))
def test_the_limiter_bounds_concurrency_until_release(make):
    async def run():  # type: ignore[no-untyped-def]
        limiter = make()
        limits = Limits(key_id=102, concurrency=2)
        first = [await limiter.acquire(limits, f"r{i}") for i in range(3)]
        await limiter.release(limits, "r0", 0)
        return first, await limiter.acquire(limits, "r3")

    first, after = asyncio.run(run())

    assert [d.allowed for d in first] == [True, True, False]
    assert first[2].limit == "concurrency"
    assert after.allowed


@pytest.mark.parametrize("make", list(_limiters()))
def test_the_limiter_refuses_once_the_tokens_are_spent(make):
    async def run():  # type: ignore[no-untyped-def]
        limiter = make()
        limits = Limits(key_id=103, tpm=100)
        ok = await limiter.acquire(limits, "r1")
        await limiter.release(limits, "r1", 150)
        return ok, await limiter.acquire(limits, "r2")

    ok, refused = asyncio.run(run())

    assert ok.allowed
    assert not refused.allowed and refused.limit == "tokens" and refused.retry_after_s >= 1


def _record(request_id: str, org_id: int, tokens: int = 3) -> bytes:
    import orjson

    return orjson.dumps(
        {
            "request_id": request_id, "organization_id": org_id, "api_key_id": 1,
            "model_code_id": 1, "model_code": "bot", "instance_id": None, "endpoint": "chat",
            "stream": False, "prompt_tokens": tokens, "completion_tokens": tokens,
            "status_code": 200, "error_code": "", "attempts": 1, "latency_ms": 1.0,
            "ttft_ms": None, "started_at": 1_800_000_000.0,
        }
    )  # fmt: skip


@pytest.mark.parametrize("make", list(_buffers()))
def test_the_flush_writes_buffered_records_once_by_request_id(make, owner_org):
    # Given a buffer holding a record twice (a gateway retried its push) and a malformed one
    buffer = make()
    records = [_record("req_a", owner_org.pk), _record("req_b", owner_org.pk)]

    async def push() -> None:
        await buffer.push([*records, records[0], b"not json"])
        await buffer.push([records[1]])

    asyncio.run(push())

    # When the flush runs (twice, as after a crash between write and acknowledgement)
    read = usage_flush(buffer=buffer, batch_size=2)
    usage_flush(buffer=buffer)

    # Then each request is recorded once, and the buffer is empty
    assert read == 5
    assert sorted(UsageRecord.objects.values_list("request_id", "total_tokens")) == [
        ("req_a", 6),
        ("req_b", 6),
    ]
    assert buffer.size() == 0


@pytest.mark.parametrize("make", list(_buffers()))
def test_a_flush_does_nothing_while_another_holds_the_lock(make, owner_org):
    buffer = make()
    asyncio.run(buffer.push([_record("req_c", owner_org.pk)]))
    assert buffer.lock(ttl_s=5)
    try:
        assert usage_flush(buffer=buffer) == 0
    finally:
        buffer.unlock()

    assert usage_flush(buffer=buffer) == 1

"""Rate limiters: the Redis implementation and the in-process one (embedded mode) behave the
same."""

from __future__ import annotations

import asyncio

import pytest
from django.conf import settings

from apps.gateway.ratelimit import InProcessRateLimiter, Limits, RedisRateLimiter


def _limiters():  # type: ignore[no-untyped-def]
    yield pytest.param(InProcessRateLimiter, id="in-process")
    if settings.REDIS_URL:
        yield pytest.param(RedisRateLimiter, id="redis")


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

"""The gateways' budget counters: Redis scripts and the in-process twin behave the same."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest
from django.conf import settings

from apps.gateway.budget import (
    InProcessBudgets,
    RedisBudgetControl,
    RedisBudgetGuard,
    period_of,
)


def _pairs():  # type: ignore[no-untyped-def]
    def in_process() -> tuple[Any, Any]:
        both = InProcessBudgets()
        return both, both

    yield pytest.param(in_process, id="in-process")
    if settings.REDIS_URL:
        yield pytest.param(lambda: (RedisBudgetGuard(), RedisBudgetControl()), id="redis")


def _reserve(guard: Any, rid: str, prompt: int = 10, completion: int = 10, key: int = 1) -> Any:
    return guard.reserve(
        key_id=key, org_id=50, model_code_id=9, request_id=rid, prompt_estimate=prompt,
        max_tokens=completion,
    )  # fmt: skip


def _settle(guard: Any, rid: str, prompt: int, completion: int, key: int = 1) -> Any:
    return guard.settle(
        key_id=key, org_id=50, model_code_id=9, request_id=rid, prompt_tokens=prompt,
        completion_tokens=completion,
    )  # fmt: skip


@pytest.mark.parametrize("make", list(_pairs()))
def test_concurrent_reservations_never_pass_the_limit_together(make):
    guard, control = make()
    control.set_price(9, 1_000_000, 2_000_000)  # 1 and 2 per million tokens
    # Each request's worst case: 10 * 1e6 + 10 * 2e6 = 3e7 pico; room for exactly 10.
    control.set_limit("key", 1, 300_000_000)

    async def run() -> list[Any]:
        return await asyncio.gather(*[_reserve(guard, f"c{i}") for i in range(64)])

    results = asyncio.run(run())

    assert sum(r.allowed for r in results) == 10
    refused = [r for r in results if not r.allowed]
    assert {(r.scope, r.reason) for r in refused} == {("key", "exhausted")}
    assert control.spent("key", 1, period_of()) == (0, 300_000_000)


@pytest.mark.parametrize("make", list(_pairs()))
def test_settling_counts_the_real_cost_and_frees_the_worst_case(make):
    guard, control = make()
    control.set_price(9, 1_000_000, 2_000_000)
    control.set_limit("key", 2, 75_000_000)

    async def run() -> list[Any]:
        first = await _reserve(guard, "s1", key=2)
        second = await _reserve(guard, "s2", key=2)
        third = await _reserve(guard, "s3", key=2)
        await _settle(guard, "s1", 10, 2, key=2)  # 1.4e7 real instead of 3e7: room for s4
        return [first, second, third, await _reserve(guard, "s4", key=2)]

    first, second, third, fourth = asyncio.run(run())

    assert first.allowed and second.allowed and not third.allowed and fourth.allowed
    assert first.worst == 30_000_000
    assert control.spent("key", 2, period_of()) == (14_000_000, 60_000_000)
    assert control.spent("organization", 50, period_of())[0] == 14_000_000


@pytest.mark.parametrize("make", list(_pairs()))
def test_a_blocked_organization_is_refused_and_unblocked_at_once(make):
    guard, control = make()

    async def run() -> tuple[Any, Any]:
        control.set_blocked("organization", 50, period_of(), True)
        blocked = await _reserve(guard, "b1", key=3)
        control.set_blocked("organization", 50, period_of(), False)
        return blocked, await _reserve(guard, "b2", key=3)

    blocked, after = asyncio.run(run())

    assert (blocked.allowed, blocked.scope, blocked.reason) == (False, "organization", "blocked")
    assert after.allowed


@pytest.mark.parametrize("make", list(_pairs()))
def test_an_unpriced_model_code_reserves_nothing_and_the_floor_only_raises(make):
    guard, control = make()
    control.set_limit("key", 4, 0)
    unpriced = asyncio.run(_reserve(guard, "u1", key=4))
    control.raise_spent("key", 4, period_of(), 500)
    control.raise_spent("key", 4, period_of(), 100)

    assert unpriced.allowed and unpriced.worst == 0
    assert control.spent("key", 4, period_of()) == (500, 0)

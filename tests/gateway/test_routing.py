"""Routing policies and the circuit breaker, on the in-memory table."""

from __future__ import annotations

from collections import Counter

from apps.gateway.routing import RetryBudget, RoutingTable
from apps.gateway.types import InstanceSnapshot, ModelSnapshot


def _table(policy: str, n: int = 3) -> tuple[RoutingTable, object]:
    table = RoutingTable(breaker_failures=2, breaker_cooldown_s=60, load_factor=1.25)
    instances = tuple(
        InstanceSnapshot(id=f"i{k}", endpoint=f"http://h{k}:1", secret="s") for k in range(n)
    )
    table.replace([ModelSnapshot(1, 1, "org", "bot", policy, 0, instances)])
    return table, table.get(1, "bot")


def test_least_outstanding_picks_the_least_busy_instance_and_spreads_ties():
    table, route = _table("least_outstanding")
    route.instances[0].outstanding = 5
    route.instances[1].outstanding = 1
    route.instances[2].outstanding = 3

    assert table.choose(route, exclude=set()).id == "i1"
    for state in route.instances:
        state.outstanding = 0
    assert len({table.choose(route, exclude=set()).id for _ in range(6)}) == 3


def test_session_affinity_keeps_a_session_on_its_instance():
    table, route = _table("session_affinity")

    picks = {
        s: {table.choose(route, exclude=set(), session=s).id for _ in range(5)} for s in "abcdefgh"
    }

    assert all(len(p) == 1 for p in picks.values())
    assert len({next(iter(p)) for p in picks.values()}) > 1  # sessions spread out


def test_prefix_aware_routing_sends_a_prefix_to_one_instance_until_it_is_overloaded():
    table, route = _table("prefix_aware")
    first = table.choose(route, exclude=set(), prefix="You are a helpful bot.")
    assert {table.choose(route, exclude=set(), prefix="You are a helpful bot.").id} == {first.id}

    # When that instance carries more than its bounded share, the prefix spills to the next
    first.outstanding = 4
    spill = table.choose(route, exclude=set(), prefix="You are a helpful bot.")
    assert spill.id != first.id

    # And different prefixes spread over the instances
    first.outstanding = 0
    spread = Counter(table.choose(route, exclude=set(), prefix=f"p{i}").id for i in range(60))
    assert len(spread) == 3


def test_the_breaker_takes_a_failing_instance_out_and_a_success_brings_it_back():
    table, route = _table("least_outstanding", n=2)
    bad = route.instances[0]

    table.record_failure(bad)
    table.record_failure(bad)

    assert {table.choose(route, exclude=set()).id for _ in range(4)} == {"i1"}
    # With every other instance excluded, an open instance is still tried rather than refusing
    assert table.choose(route, exclude={"i1"}).id == "i0"
    table.record_success(bad)
    assert {table.choose(route, exclude=set()).id for _ in range(4)} == {"i0", "i1"}


def test_outstanding_counts_survive_a_table_reload():
    table, route = _table("least_outstanding", n=2)
    route.instances[0].outstanding = 7

    table.replace([route.snapshot])

    assert table.get(1, "bot").instances[0].outstanding == 7


def test_the_retry_budget_bounds_retries_to_a_share_of_requests():
    budget = RetryBudget(ratio=0.1, reserve=2)
    for _ in range(10):
        budget.deposit()

    granted = sum(budget.withdraw() for _ in range(10))

    assert granted == 3

"""Budgets through two real gateway processes: 64 concurrent requests at the edge of a key's
budget, exact spend, and the billing task's block refused by both gateways within a second."""

from __future__ import annotations

import time
from concurrent.futures import ThreadPoolExecutor
from datetime import timedelta
from decimal import Decimal

import httpx
from django.utils import timezone

from apps.billing.models import BudgetAlert, Price
from apps.billing.services.budgets import budget_set, budgets_enforce, prices_publish
from tests.gateway.conftest import flushed_usage

IN, OUT = Decimal("1"), Decimal("1000")  # per million tokens: 0.000001 and 0.001 a token
MAX_TOKENS = 8


def _price(code) -> None:  # type: ignore[no-untyped-def]
    Price.objects.create(
        model_code=code, currency="EUR", input_per_million=IN, output_per_million=OUT,
        valid_from=timezone.now() - timedelta(days=1),
    )  # fmt: skip
    prices_publish()  # what the billing pass does every INVENTIV_BUDGETS_ENFORCE_INTERVAL_S


def _ask(url: str, key: str, i: int) -> tuple[int, str, int]:
    body = {"model": "sales-bot", "max_tokens": MAX_TOKENS,
            "messages": [{"role": "user", "content": f"hello number {i}"}]}  # fmt: skip
    request = httpx.Request(
        "POST", f"{url}/v1/chat/completions", json=body, headers={"authorization": f"Bearer {key}"}
    )
    with httpx.Client(timeout=30) as client:
        response = client.send(request)
    code = response.json().get("error", {}).get("code", "") if response.status_code >= 400 else ""
    return response.status_code, code, len(request.content)


def test_64_concurrent_requests_overshoot_a_budget_by_at_most_one_worst_case(
    model_code, start_engine, start_gateway, new_key
):
    # Given a priced model code, two gateways, and a key whose budget covers about 10 requests
    _price(model_code)
    engine = start_engine(model_code, token_rate=200.0, max_tokens=MAX_TOKENS)
    gateways = [start_gateway(), start_gateway()]
    key, secret = new_key()
    limit = Decimal("0.08")
    budget_set(organization=key.organization, api_key=key, currency="EUR", monthly_limit=limit)

    # When 64 requests arrive at once, spread over both gateways
    with ThreadPoolExecutor(max_workers=64) as pool:
        answers = list(pool.map(lambda i: _ask(gateways[i % 2].url, secret, i), range(64)))

    # Then some pass, the rest are refused with insufficient_quota, and billing is exact
    passed = [a for a in answers if a[0] == 200]
    refused = [a for a in answers if a[0] == 429]
    assert len(passed) + len(refused) == 64
    assert {a[1] for a in refused} == {"insufficient_quota"}
    assert 5 <= len(passed) <= 10
    records = flushed_usage(64)
    prompt, completion = engine.generated()
    assert sum(r.prompt_tokens for r in records) == prompt
    assert sum(r.completion_tokens for r in records) == completion
    spend = (prompt * IN + completion * OUT) / 1_000_000
    worst = (max(a[2] for a in answers) * IN + MAX_TOKENS * OUT) / 1_000_000
    assert spend <= limit + worst
    # And the rollups carry the same spend, to the cent and beyond
    (state,) = budgets_enforce()
    assert state.spend == spend


def test_the_billing_block_is_refused_by_both_gateways_within_a_second_and_lifted(
    model_code, start_engine, start_gateway, new_key
):
    # Given spend on an organization whose budget is then lowered below it
    _price(model_code)
    start_engine(model_code, max_tokens=MAX_TOKENS)
    gateways = [start_gateway(), start_gateway()]
    key, secret = new_key()
    assert [_ask(g.url, secret, 0)[0] for g in gateways] == [200, 200]
    flushed_usage(2)
    budget_set(organization=key.organization, currency="EUR", monthly_limit="0.001")

    # When the billing task runs
    crossed = time.monotonic()
    (state,) = budgets_enforce()

    # Then both gateways refuse within a second, and the 80 % and 100 % alerts are recorded
    assert state.blocked
    for gateway in gateways:
        status, code, _ = _ask(gateway.url, secret, 1)
        assert (status, code) == (429, "insufficient_quota")
    assert time.monotonic() - crossed < 1.0
    assert sorted(BudgetAlert.objects.values_list("percent", flat=True)) == [80, 100]

    # When the budget is raised, both gateways serve the key again
    budget_set(organization=key.organization, currency="EUR", monthly_limit="10")
    assert [_ask(g.url, secret, 2)[0] for g in gateways] == [200, 200]

"""Prices with history and the hourly rollups: exact Decimal spend, idempotent by construction."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from decimal import Decimal

import pytest
from django.utils import timezone
from rest_framework.test import APIClient

from apps.accounts.models import Organization
from apps.billing.models import Price, UsageRecord, UsageRollup
from apps.billing.services import price_set, usage_records_upsert
from apps.billing.services.rollups import usage_rollup, usage_rollup_hour
from apps.gateway.usage_record import FINAL_SEQ, UsageRecordData
from apps.models.models import LlmModel
from inventiv.errors import ApplicationError, Conflict

HOUR = datetime(2026, 3, 2, 10, tzinfo=UTC)


@pytest.fixture
def bot(owner_org: Organization) -> LlmModel:
    return LlmModel.objects.create(organization=owner_org, name="sales-bot", model_id="m")


def _record(
    org: Organization, bot: LlmModel, rid: str, prompt: int, completion: int, at: datetime,
    seq: int = FINAL_SEQ, key: int | None = 7,
) -> UsageRecordData:  # fmt: skip
    return UsageRecordData(
        request_id=rid, organization_id=org.id, api_key_id=key, model_code_id=bot.id,
        model_code=bot.name, instance_id=None, endpoint="chat", stream=False,
        prompt_tokens=prompt, completion_tokens=completion, status_code=200, error_code="",
        attempts=1, latency_ms=1.0, ttft_ms=None, started_at=at.timestamp(), seq=seq,
    )  # fmt: skip


def _price(bot: LlmModel, inp: str, out: str, at: datetime) -> Price:
    # Prices start now or later through the service; history is written directly here.
    return Price.objects.create(
        model_code=bot, currency="EUR", input_per_million=Decimal(inp),
        output_per_million=Decimal(out), valid_from=at,
    )  # fmt: skip


def test_it_sets_a_price_from_now_and_refuses_to_reprice_the_past(bot):
    price = price_set(
        model_code=bot, currency="EUR", input_per_million="0.50", output_per_million="1.5"
    )
    assert price.input_per_million == Decimal("0.5") and price.currency == "EUR"

    with pytest.raises(ApplicationError) as past:
        price_set(
            model_code=bot, currency="EUR", input_per_million=1, output_per_million=1,
            valid_from=timezone.now() - timedelta(hours=1),
        )  # fmt: skip
    assert past.value.param == "valid_from"
    for bad in ({"currency": "eur"}, {"input_per_million": "-1"}, {"output_per_million": "1e-9"}):
        values = {"currency": "EUR", "input_per_million": 1, "output_per_million": 1, **bad}
        with pytest.raises(ApplicationError):
            price_set(model_code=bot, **values)  # type: ignore[arg-type]
    with pytest.raises(Conflict):
        price_set(
            model_code=bot, currency="EUR", input_per_million=1, output_per_million=1,
            valid_from=price.valid_from,
        )  # fmt: skip
    assert Price.objects.count() == 1


def test_it_bills_each_request_at_the_price_in_force_when_it_started(owner_org, bot):
    _price(bot, "1.00", "2.00", HOUR - timedelta(days=1))
    _price(bot, "3.00", "5.00", HOUR + timedelta(minutes=30))
    usage_records_upsert(
        records=[
            _record(owner_org, bot, "a", 1_000, 2_000, HOUR + timedelta(minutes=10)),
            _record(owner_org, bot, "b", 1_000, 2_000, HOUR + timedelta(minutes=40)),
            _record(owner_org, bot, "c", 7, 3, HOUR + timedelta(minutes=50), key=None),
        ]
    )

    usage_rollup_hour(hour=HOUR)

    keyed = UsageRollup.objects.get(api_key_id=7)
    # a: 1000 * 1 + 2000 * 2 = 5000 per million; b: 1000 * 3 + 2000 * 5 = 13000 per million.
    assert keyed.spend == Decimal("0.018") and keyed.requests == 2
    assert (keyed.prompt_tokens, keyed.completion_tokens, keyed.currency) == (2000, 4000, "EUR")
    keyless = UsageRollup.objects.get(api_key_id=0)
    assert keyless.spend == Decimal("0.000036")  # 7 * 3 + 3 * 5 = 36 per million


def test_it_changes_nothing_when_records_are_replayed_duplicated_or_rolled_up_twice(owner_org, bot):
    _price(bot, "1", "1", HOUR - timedelta(days=1))
    at = HOUR + timedelta(minutes=5)
    usage_records_upsert(records=[_record(owner_org, bot, "s", 10, 5, at, seq=1)])
    usage_rollup(since=HOUR - timedelta(days=365))
    # The stream's final record supersedes its checkpoint; a replay of both changes nothing.
    final = _record(owner_org, bot, "s", 10, 40, at)
    usage_records_upsert(records=[final, _record(owner_org, bot, "s", 10, 5, at, seq=1)])
    usage_records_upsert(records=[final, final])
    usage_rollup(since=HOUR - timedelta(days=365))
    usage_rollup(since=HOUR - timedelta(days=365))

    rollup = UsageRollup.objects.get()
    assert (rollup.requests, rollup.prompt_tokens, rollup.completion_tokens) == (1, 10, 40)
    assert rollup.spend == Decimal("0.00005")
    assert UsageRecord.objects.count() == 1


def test_it_counts_requests_served_before_any_price_as_unpriced(owner_org, bot):
    usage_records_upsert(records=[_record(owner_org, bot, "u", 10, 10, HOUR)])
    usage_rollup_hour(hour=HOUR)
    rollup = UsageRollup.objects.get()
    assert (rollup.spend, rollup.unpriced_requests, rollup.currency) == (0, 1, "")


def test_it_lets_operators_set_prices_over_rest_and_owners_only_read_theirs(
    api, staff, bot, stranger_api
):
    operator = APIClient()
    operator.force_authenticate(staff)
    body = {"model_code": bot.id, "currency": "EUR", "input_per_million": "0.25",
            "output_per_million": "1.000001"}  # fmt: skip

    refused = api.post("/api/v1/prices/", body, format="json")
    created = operator.post("/api/v1/prices/", body, format="json")
    past = operator.post(
        "/api/v1/prices/", {**body, "valid_from": "2020-01-01T00:00:00Z"}, format="json"
    )

    assert refused.status_code == 403
    assert created.status_code == 201, created.json()
    assert created.json()["output_per_million"] == "1.000001"
    assert past.status_code == 400 and past.json()["error"]["param"] == "valid_from"
    assert [p["id"] for p in api.get("/api/v1/prices/").json()["results"]] == [created.json()["id"]]
    assert stranger_api.get("/api/v1/prices/").json()["results"] == []


def test_it_exports_usage_per_day_key_and_model_code_as_csv(api, owner_org, bot, stranger_api):
    _price(bot, "1", "1", HOUR - timedelta(days=1))
    usage_records_upsert(
        records=[
            _record(owner_org, bot, "d1", 100, 100, HOUR),
            _record(owner_org, bot, "d2", 100, 300, HOUR + timedelta(hours=3)),
            _record(owner_org, bot, "d3", 5, 5, HOUR + timedelta(days=1)),
        ]
    )
    for hour in (HOUR, HOUR + timedelta(hours=3), HOUR + timedelta(days=1)):
        usage_rollup_hour(hour=hour)

    response = api.get("/api/v1/usage/export.csv?model_code=sales-bot")
    theirs = stranger_api.get("/api/v1/usage/export.csv")

    assert response["Content-Type"].startswith("text/csv")
    lines = response.content.decode().splitlines()
    slug = owner_org.slug
    assert lines == [
        "day,organization,api_key_id,model_code,currency,requests,prompt_tokens,"
        "completion_tokens,spend",
        f"2026-03-02,{slug},7,sales-bot,EUR,2,200,400,0.000600000",
        f"2026-03-03,{slug},7,sales-bot,EUR,1,5,5,0.000010000",
    ]
    assert theirs.content.decode().splitlines()[1:] == []

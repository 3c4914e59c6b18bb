"""Budgets over REST: owners set them for their organization or a key; others see or touch
nothing; the state shows the month's spend, the block and the alerts."""

from __future__ import annotations

import asyncio
from datetime import timedelta
from decimal import Decimal
from typing import Any

import pytest
from asgiref.sync import async_to_sync
from channels.layers import get_channel_layer
from django.utils import timezone

from apps.billing.models import BudgetAlert, Price, UsageRollup
from apps.billing.services import usage_records_upsert
from apps.billing.services.budgets import budget_set, budgets_enforce, month_start
from apps.gateway.budget import budget_control, period_of
from apps.gateway.services import api_key_create
from apps.gateway.usage_record import FINAL_SEQ, UsageRecordData
from apps.models.models import LlmModel
from inventiv.events import BUDGET_ALERT, org_group


def test_it_sets_shows_and_deletes_budgets_for_owners_only(api, owner_org, stranger_api):
    key, _ = api_key_create(organization=owner_org, name="ci")
    bot = LlmModel.objects.create(organization=owner_org, name="sales-bot", model_id="m")
    Price.objects.create(
        model_code=bot, currency="EUR", input_per_million=Decimal("1"),
        output_per_million=Decimal("2"), valid_from=timezone.now() - timedelta(days=1),
    )  # fmt: skip
    usage_records_upsert(
        records=[
            UsageRecordData(
                request_id="r1",
                organization_id=owner_org.id,
                api_key_id=key.id,
                model_code_id=bot.id,
                model_code=bot.name,
                instance_id=None,
                endpoint="chat",
                stream=False,
                prompt_tokens=500_000,
                completion_tokens=500_000,
                status_code=200,
                error_code="",
                attempts=1,
                latency_ms=1,
                ttft_ms=None,
                started_at=timezone.now().timestamp(),
                seq=FINAL_SEQ,
            )
        ]
    )

    bad = api.post("/api/v1/budgets/", {"currency": "EUR", "monthly_limit": "-1"}, format="json")
    theirs = stranger_api.post(
        "/api/v1/budgets/", {"currency": "EUR", "monthly_limit": "1", "api_key": key.id},
        format="json",
    )  # fmt: skip
    org_budget = api.post(
        "/api/v1/budgets/", {"currency": "EUR", "monthly_limit": "10"}, format="json"
    )
    key_budget = api.post(
        "/api/v1/budgets/",
        {"currency": "EUR", "monthly_limit": "1.5", "api_key": key.id, "warn_at_percent": 50},
        format="json",
    )
    budgets_enforce()  # spend 1.5 EUR: the key's budget is reached, the organization's is not
    listed = api.get("/api/v1/budgets/").json()["data"]

    assert bad.status_code == 400 and bad.json()["error"]["param"] == "monthly_limit"
    assert theirs.status_code == 404 and theirs.json()["error"]["param"] == "api_key"
    assert org_budget.status_code == 201 and key_budget.status_code == 201
    states = [
        (b["api_key_id"], b["month_to_date_spend"], b["blocked"], b["alerts"]) for b in listed
    ]
    assert states == [
        (None, "1.500000000", False, []),
        (key.id, "1.500000000", True, [50, 100]),
    ]  # fmt: skip
    assert stranger_api.get("/api/v1/budgets/").json()["data"] == []
    assert stranger_api.delete(f"/api/v1/budgets/{listed[1]['id']}/").status_code == 404

    assert api.delete(f"/api/v1/budgets/{listed[1]['id']}/").status_code == 204
    assert budget_control().spent("key", key.id, period_of())[0] == 1_500_000_000_000


def test_it_publishes_each_threshold_once_to_the_organization(
    owner_org, django_capture_on_commit_callbacks
):
    # Given a member's WebSocket group subscribed, and a month's spend over a 1 EUR budget
    layer = get_channel_layer()
    channel = async_to_sync(layer.new_channel)()
    async_to_sync(layer.group_add)(org_group(owner_org.id), channel)
    UsageRollup.objects.create(
        organization=owner_org, model_code="sales-bot", hour=month_start(), currency="EUR",
        requests=1, spend=Decimal("0.9"),
    )  # fmt: skip

    # When the budget is set, and the billing pass runs twice
    with django_capture_on_commit_callbacks(execute=True):
        budget_set(organization=owner_org, currency="EUR", monthly_limit="1")
    for _ in range(2):
        with django_capture_on_commit_callbacks(execute=True):
            budgets_enforce()

    # Then the 80 % alert was published once, and no 100 % one

    async def receive(wait_s: float) -> dict[str, Any]:
        return await asyncio.wait_for(layer.receive(channel), wait_s)

    message = async_to_sync(receive)(5)
    with pytest.raises(TimeoutError):
        async_to_sync(receive)(0.3)
    assert message["event"] == BUDGET_ALERT
    assert (message["data"]["percent"], message["data"]["spend"]) == (80, "0.900000000")
    assert BudgetAlert.objects.count() == 1

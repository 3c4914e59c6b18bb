"""Machine cost from the instances' history, to the minute, and the margin per model code."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from decimal import Decimal

from rest_framework.test import APIClient

from apps.billing.costs import instance_costs, model_code_margins
from apps.billing.models import UsageRollup
from apps.instances.choices import InstanceStatus
from apps.instances.models import Instance, InstanceEvent, Provider
from apps.models.models import LlmModel

T0 = datetime(2026, 3, 2, 10, tzinfo=UTC)


def _instance(bot: LlmModel, price: str, history: list[tuple[str, datetime]]) -> Instance:
    provider, _ = Provider.objects.get_or_create(name="local-test", defaults={"kind": "local"})
    instance = Instance.objects.create(
        organization=bot.organization, llm_model=bot, provider=provider,
        status=history[-1][0], status_changed_at=history[-1][1], hourly_price=Decimal(price),
        terminated_at=history[-1][1] if history[-1][0] == InstanceStatus.TERMINATED else None,
        engine_secret_encrypted="x",
    )  # fmt: skip
    Instance.objects.filter(id=instance.id).update(created_at=history[0][1])
    for status, at in history:
        event = InstanceEvent.objects.create(instance=instance, to_status=status, reason="test")
        InstanceEvent.objects.filter(id=event.id).update(created_at=at)
    return instance


def test_it_costs_the_booting_to_terminated_span_per_started_minute_and_adds_up(owner_org, staff):
    # Given a model code served 91 minutes (90 and 10 s) by one machine at 1.20 an hour, one
    # that never got a machine, and 2 million tokens billed 3.00 in the same window
    bot = LlmModel.objects.create(organization=owner_org, name="sales-bot", model_id="m")
    _instance(bot, "1.20", [
        ("provisioning", T0 - timedelta(minutes=5)),
        ("booting", T0),
        ("ready", T0 + timedelta(minutes=4)),
        ("terminated", T0 + timedelta(minutes=90, seconds=10)),
    ])  # fmt: skip
    _instance(bot, "9.99", [
        ("provisioning", T0), ("provisioning_failed", T0 + timedelta(minutes=1)),
        ("terminated", T0 + timedelta(minutes=2)),
    ])  # fmt: skip
    UsageRollup.objects.create(
        organization=owner_org, api_key_id=1, model_code_id=bot.id, model_code=bot.name,
        hour=T0, currency="EUR", requests=10, prompt_tokens=1_000_000,
        completion_tokens=1_000_000, spend=Decimal("3.00"),
    )  # fmt: skip
    window = {"since": T0 - timedelta(hours=1), "until": T0 + timedelta(hours=3)}

    # When operators read the costs
    (cost,) = instance_costs(**window)
    (margin,) = model_code_margins(**window)
    operator = APIClient()
    operator.force_authenticate(staff)
    body = operator.get(
        "/api/v1/billing/costs/", {k: v.isoformat() for k, v in window.items()}
    ).json()

    # Then the machine is billed 91 minutes, and cost, cost per token and margin add up
    assert (cost.minutes, cost.cost) == (91, Decimal("1.82"))
    assert (margin.cost, margin.revenue, margin.margin) == (
        Decimal("1.82"), Decimal("3.00"), Decimal("1.18"),
    )  # fmt: skip
    assert margin.cost_per_million_tokens == Decimal("0.91")
    assert body["model_codes"][0]["margin"] == "1.180000"
    assert [i["minutes"] for i in body["instances"]] == [91]


def test_it_clips_a_live_machine_to_the_window_and_is_for_operators_only(api, owner_org):
    bot = LlmModel.objects.create(organization=owner_org, name="sales-bot", model_id="m")
    _instance(bot, "0.60", [("provisioning", T0), ("booting", T0), ("ready", T0)])

    (cost,) = instance_costs(since=T0 + timedelta(minutes=30), until=T0 + timedelta(minutes=40))

    assert (cost.minutes, cost.cost) == (10, Decimal("0.1"))
    assert api.get("/api/v1/billing/costs/").status_code == 403

"""The operators' fleet page (issue 11): staff only; every provider with its instances by
state, the cost per hour now, each model code's margin this month, links to admin, Flower and
metrics."""

from __future__ import annotations

import re
from datetime import UTC, datetime
from decimal import Decimal

from django.test import Client

from apps.accounts.models import Organization, User
from apps.billing.costs import model_code_margins
from apps.billing.models import UsageRollup
from apps.billing.services.budgets import month_start
from apps.instances.choices import InstanceStatus
from apps.instances.models import Instance, InstanceEvent, Provider
from apps.models.models import LlmModel
from tests.instances.factories import make_instance


def _booted(model: LlmModel, status: InstanceStatus, price: str, at: datetime) -> Instance:
    instance, _ = make_instance(model, status, hourly_price=Decimal(price))
    for to in (InstanceStatus.BOOTING, status):
        event = InstanceEvent.objects.create(instance=instance, to_status=to, reason="t")
        InstanceEvent.objects.filter(id=event.id).update(created_at=at)
    return instance


def _cell(html: str, row_id: str) -> list[str]:
    row = re.search(rf'<tr id="{row_id}">(.*?)</tr>', html, re.S)
    assert row, f"no row {row_id}"
    return [
        re.sub(r"<[^>]+>", "", c).strip()
        for c in re.findall(r"<t[dh][^>]*>(.*?)</t[dh]>", row[1], re.S)
    ]


def test_operators_see_every_provider_by_state_the_cost_per_hour_and_the_margin(
    staff: User, owner_org: Organization
) -> None:
    # Given a local provider serving two ready machines (1.50 and 0.25 an hour) and one still
    # provisioning, a cloud provider with none, and tokens billed this month
    local = Provider.objects.create(name="local-ops", kind="local")
    Provider.objects.create(name="scw-ops", kind="scaleway", enabled=False)
    bot = LlmModel.objects.create(
        organization=owner_org, name="sales-bot", model_id="m", provider=local, status="active"
    )
    start = month_start()
    _booted(bot, InstanceStatus.READY, "1.50", start)
    _booted(bot, InstanceStatus.READY, "0.25", start)
    make_instance(bot, InstanceStatus.PROVISIONING)
    UsageRollup.objects.create(
        organization=owner_org, api_key_id=1, model_code_id=bot.id, model_code=bot.name,
        hour=start, currency="EUR", requests=10, prompt_tokens=600_000,
        completion_tokens=400_000, spend=Decimal("3.00"),
    )  # fmt: skip
    client = Client()
    client.force_login(staff)
    # When an operator opens the fleet page
    response = client.get("/ops/fleet/")
    # Then it lists both providers by state, the burn, and the month's margin of the model code
    assert response.status_code == 200
    html = response.content.decode()
    header = re.search(r'<table id="providers">\s*<thead><tr>(.*?)</tr>', html, re.S)
    assert header
    columns = [re.sub(r"<[^>]+>", "", c) for c in re.findall(r"<th[^>]*>(.*?)</th>", header[1])]
    local_row = dict(zip(columns, _cell(html, "provider-local-ops"), strict=True))
    assert (local_row["Ready"], local_row["Provisioning"], local_row["Total"]) == ("2", "1", "3")
    cloud_row = dict(zip(columns, _cell(html, "provider-scw-ops"), strict=True))
    assert cloud_row["Total"] == "0" and "(disabled)" in cloud_row["Provider"]
    assert re.search(r'id="cost-per-hour">1\.75<', html)
    (margin,) = model_code_margins(since=start, until=datetime.now(UTC))
    row = _cell(html, f"margin-{bot.id}")
    assert row[0] == "sales-bot" and row[4] == "1000000" and row[5] == "3.00"
    assert row[7] == f"{margin.margin:.2f}"
    # ... and links to the admin, Flower and the metrics
    links = re.search(r'<ul id="ops-links">(.*?)</ul>', html, re.S)
    assert links
    assert re.findall(r'href="([^"]+)"', links[1]) == [
        "/admin/",
        "http://127.0.0.1:5555/flower/",
        "/metrics",
    ]


def test_the_fleet_page_is_not_found_for_customers_and_asks_strangers_to_sign_in(
    owner: User,
) -> None:
    customer = Client()
    customer.force_login(owner)
    refused = customer.get("/ops/fleet/")
    assert refused.status_code == 404
    assert "local" not in refused.content.decode().lower().split("<main", 1)[1]
    anonymous = Client().get("/ops/fleet/")
    assert anonymous.status_code == 302 and "/accounts/login/" in anonymous["Location"]

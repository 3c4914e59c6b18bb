"""The web role's /metrics: request latency by route and status, the fleet gauges, the broker's
queue length, and the token that protects it (issue 11)."""

from __future__ import annotations

import asyncio
from decimal import Decimal
from typing import Any

import pytest
from django.test import AsyncClient, Client

from apps.accounts.models import Organization, User
from apps.instances.choices import InstanceStatus
from apps.instances.models import InstanceEvent, Provider
from apps.models.choices import ModelStatus
from apps.models.models import LlmModel
from inventiv.celery import app as celery_app
from tests.instances.factories import make_instance
from tests.metrics.helpers import TOKEN, sample

pytestmark = pytest.mark.django_db


@pytest.fixture(autouse=True)
def _token(settings: Any) -> None:
    settings.METRICS_TOKEN = TOKEN


def scrape(client: Client | None = None) -> str:
    response = (client or Client()).get("/metrics", headers={"Authorization": f"Bearer {TOKEN}"})
    assert response.status_code == 200, response.content
    assert response["Content-Type"].startswith("text/plain")
    return response.content.decode()


def _count(text: str, route: str, status: str, method: str = "GET") -> float:
    name = "web_request_duration_seconds_count"
    return sample(text, name, route=route, method=method, status=status) or 0.0


def test_it_times_requests_by_route_method_and_status(owner: User) -> None:
    # Given the counts before
    before = scrape()
    # When /api/v1/me/ is asked twice signed in and once not, and an unknown path once
    signed_in = Client()
    signed_in.force_login(owner)
    assert signed_in.get("/api/v1/me/").status_code == 200
    assert signed_in.get("/api/v1/me/").status_code == 200
    assert Client().get("/api/v1/me/").status_code in (401, 403)
    anonymous_status = str(Client().get("/api/v1/me/").status_code)
    assert Client().get("/no/such/page/").status_code == 404
    after = scrape()
    # Then each (route, status) counted its requests, by pattern, not by path
    assert _count(after, "api/v1/me/", "200") - _count(before, "api/v1/me/", "200") == 2
    assert (
        _count(after, "api/v1/me/", anonymous_status)
        - _count(before, "api/v1/me/", anonymous_status)
        == 2
    )
    assert _count(after, "<unmatched>", "404") - _count(before, "<unmatched>", "404") == 1
    # ... with their durations summed (a real, positive time)
    total = sample(
        after, "web_request_duration_seconds_sum", route="api/v1/me/", method="GET", status="200"
    )
    assert total is not None and total > 0


@pytest.mark.django_db(transaction=True)
def test_it_times_requests_served_on_the_async_path_too() -> None:
    # Given Django's ASGI handler (the web role runs under uvicorn)
    async def through_asgi() -> tuple[str, str]:
        client = AsyncClient()
        auth = {"Authorization": f"Bearer {TOKEN}"}
        before = await client.get("/metrics", headers=auth)
        # When a page is asked through it
        assert (await client.get("/no/such/async/page/")).status_code == 404
        after = await client.get("/metrics", headers=auth)
        return before.content.decode(), after.content.decode()

    before, after = asyncio.run(through_asgi())
    # Then it is counted
    assert _count(after, "<unmatched>", "404") - _count(before, "<unmatched>", "404") == 1


def test_it_answers_404_without_a_token_setting_and_401_with_a_wrong_token(
    settings: Any,
) -> None:
    wrong = Client().get("/metrics", headers={"Authorization": "Bearer nope"})
    assert wrong.status_code == 401
    assert wrong.json()["error"]["code"] == "not_authenticated"
    assert wrong["WWW-Authenticate"] == "Bearer"
    assert Client().get("/metrics").status_code == 401
    settings.METRICS_TOKEN = None
    off = Client().get("/metrics", headers={"Authorization": f"Bearer {TOKEN}"})
    assert off.status_code == 404
    assert off.json()["error"]["code"] == "not_found"


def _serving(model: LlmModel, status: InstanceStatus, price: str) -> None:
    instance, _ = make_instance(model, status, hourly_price=Decimal(price))
    InstanceEvent.objects.create(instance=instance, to_status=InstanceStatus.BOOTING, reason="t")
    InstanceEvent.objects.create(instance=instance, to_status=status, reason="t")


def test_it_reports_the_fleet_by_provider_and_state_and_its_cost_per_hour(
    owner_org: Organization,
) -> None:
    # Given two providers: local serves two ready instances (1.50 and 0.25 an hour) and one
    # provisioning (no machine yet: no cost); "scw" has none; a terminated one is history
    local = Provider.objects.create(name="local-metrics", kind="local")
    Provider.objects.create(name="scw-metrics", kind="scaleway")
    bot = LlmModel.objects.create(
        organization=owner_org, name="bot", model_id="m", status=ModelStatus.ACTIVE, provider=local
    )
    LlmModel.objects.create(organization=owner_org, name="draft", model_id="m")
    _serving(bot, InstanceStatus.READY, "1.50")
    _serving(bot, InstanceStatus.READY, "0.25")
    make_instance(bot, InstanceStatus.PROVISIONING, hourly_price=Decimal("9"))
    make_instance(bot, InstanceStatus.TERMINATED)
    # When the web role is scraped
    text = scrape()
    # Then the gauges read the database now
    assert sample(text, "fleet_instances", provider="local-metrics", status="ready") == 2
    assert sample(text, "fleet_instances", provider="local-metrics", status="provisioning") == 1
    assert sample(text, "fleet_instances", provider="scw-metrics", status="ready") == 0
    assert sample(text, "fleet_instances", status="terminated") is None
    assert sample(text, "fleet_model_codes", status="active") == 1
    assert sample(text, "fleet_model_codes", status="draft") == 1
    assert sample(text, "fleet_model_codes", status="decommissioned") == 0
    assert sample(text, "fleet_cost_per_hour") == pytest.approx(1.75)


def test_it_reports_the_messages_waiting_in_the_broker() -> None:
    # Given the real broker (Redis in the suite) and no worker consuming this run's queue
    before = sample(scrape(), "celery_queue_length", queue="celery")
    assert before is not None
    # When three commands are enqueued
    for _ in range(3):
        celery_app.send_task("apps.billing.tasks.usage_flush_task")
    # Then the queue's length says so
    assert sample(scrape(), "celery_queue_length", queue="celery") == before + 3

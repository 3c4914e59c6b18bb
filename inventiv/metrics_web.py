"""The web role's ``GET /metrics``: its request metrics (every uvicorn worker in multiprocess
mode; the embedded mode's in-process worker's task metrics too), plus gauges read at scrape
time, once for the whole platform:

* ``fleet_instances{provider,status}``: instances holding a machine, every provider and
  non-terminal status listed (zeros included, so a state that empties reads 0, not stale);
* ``fleet_model_codes{status}``: model codes by status;
* ``fleet_cost_per_hour``: what the machines held now cost per hour (``apps/billing/costs.py``'s
  burn: live instances' hourly prices, powered-off ones at their kept disk's; currencies summed);
* ``celery_queue_length{queue}``: messages waiting in the broker (Redis lists, priorities
  summed; the embedded mode's in-memory queue).

Protected like the gateway's: ``Authorization: Bearer $INVENTIV_METRICS_TOKEN``, 404 when the
setting is empty. A gauge that cannot be read (the broker down) is left out and counted in
``metrics_scrape_errors{source}``, the rest is still served.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable
from datetime import UTC, datetime

from django.conf import settings
from django.db.models import Count
from django.http import HttpRequest, HttpResponse, JsonResponse
from django.views.decorators.http import require_GET
from prometheus_client import CollectorRegistry, Counter
from prometheus_client.metrics_core import GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

from apps.billing.costs import cost_forecast
from apps.instances.choices import HOLDS_MACHINE, InstanceStatus
from apps.instances.models import Instance, Provider
from apps.models.choices import ModelStatus
from apps.models.models import LlmModel
from inventiv.celery import app as celery_app
from inventiv.error_codes import envelope
from inventiv.metrics import REGISTRY, Forward, process_registry, render, token_ok

logger = logging.getLogger(__name__)

SCRAPE_ERRORS = Counter(
    "metrics_scrape_errors",
    "Gauges left out of a scrape because their source could not be read, by source.",
    ["source"],
    registry=REGISTRY,
)


def fleet_counts() -> tuple[dict[tuple[str, str], int], dict[str, int]]:
    """(provider, status) -> instances holding a machine, zeros included; status -> model
    codes. Two grouped queries and the providers' names."""
    statuses = [s for s in InstanceStatus if s in HOLDS_MACHINE]
    providers = Provider.objects.values_list("name", flat=True)
    instances = {(name, str(s)): 0 for name in providers for s in statuses}
    rows = (
        Instance.objects.filter(status__in=HOLDS_MACHINE)
        .values_list("provider__name", "status")
        .annotate(n=Count("id"))
    )
    for provider, status, n in rows:
        instances[(provider or "none", status)] = n
    models = {str(s): 0 for s in ModelStatus}
    for status, n in LlmModel.objects.values_list("status").annotate(n=Count("id")):
        models[status] = n
    return instances, models


def cost_per_hour_now() -> float:
    now = datetime.now(UTC)
    # A zero-length window: the burn of the machines held now, without the month's costs.
    return float(cost_forecast(now=now, month_start=now, month_end=now)["hourly_burn"])


class FleetCollector(Collector):
    def collect(self) -> Iterable[Metric]:
        try:
            instances, models = fleet_counts()
            cost = cost_per_hour_now()
        except Exception:
            logger.exception("fleet gauges unreadable")
            SCRAPE_ERRORS.labels("database").inc()
            return []
        by_state = GaugeMetricFamily(
            "fleet_instances",
            "Instances holding a machine, by provider and status.",
            labels=["provider", "status"],
        )
        for (provider, status), n in sorted(instances.items()):
            by_state.add_metric([provider, status], n)
        by_model = GaugeMetricFamily(
            "fleet_model_codes", "Model codes, by status.", labels=["status"]
        )
        for status, n in sorted(models.items()):
            by_model.add_metric([status], n)
        burn = GaugeMetricFamily(
            "fleet_cost_per_hour",
            "What the machines held now cost per hour (currencies summed).",
            value=cost,
        )
        return [by_state, by_model, burn]


def queue_lengths() -> dict[str, int]:
    """Messages waiting in the broker per queue (the default queue and any routed one)."""
    queues = {celery_app.conf.task_default_queue}
    for route in (celery_app.conf.task_routes or {}).values():
        if isinstance(route, dict) and route.get("queue"):
            queues.add(route["queue"])
    with celery_app.connection_for_read() as conn:
        channel = conn.default_channel
        # kombu's own count: the Redis transport sums the queue's priority lists.
        return {name: int(channel._size(name)) for name in sorted(queues)}


class QueueCollector(Collector):
    def collect(self) -> Iterable[Metric]:
        try:
            lengths = queue_lengths()
        except Exception:
            logger.exception("broker queue lengths unreadable")
            SCRAPE_ERRORS.labels("broker").inc()
            return []
        family = GaugeMetricFamily(
            "celery_queue_length", "Messages waiting in the broker, by queue.", labels=["queue"]
        )
        for name, n in lengths.items():
            family.add_metric([name], n)
        return [family]


def web_registry() -> CollectorRegistry:
    registry = CollectorRegistry()
    registry.register(Forward(process_registry()))
    registry.register(FleetCollector())
    registry.register(QueueCollector())
    return registry


@require_GET
def metrics_view(request: HttpRequest) -> HttpResponse:
    token = settings.METRICS_TOKEN
    if not token:
        return JsonResponse(envelope("Unknown path /metrics.", "not_found"), status=404)
    if not token_ok(request.headers.get("Authorization", ""), token):
        response = JsonResponse(
            envelope("A valid metrics token is required.", "not_authenticated"), status=401
        )
        response["WWW-Authenticate"] = "Bearer"
        return response
    body, content_type = render(web_registry())
    return HttpResponse(body, content_type=content_type)

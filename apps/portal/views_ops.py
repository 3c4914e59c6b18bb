"""The operators' fleet page (staff only, server-rendered): every provider with its instances
by state, the cost per hour of the machines held now, the month's machine cost and forecast,
each model code's margin month-to-date (``apps/billing/costs.py``), and links to the admin,
Flower and the metrics. Anyone else gets the same 404 page as a missing one.

The counts and the cost per hour are the ones ``/metrics`` exports (``inventiv/metrics_web.py``),
so the page and the gauges never disagree."""

from __future__ import annotations

from collections import defaultdict
from dataclasses import dataclass
from datetime import UTC, datetime
from decimal import Decimal

from django.conf import settings
from django.contrib.auth.decorators import login_required
from django.http import HttpRequest, HttpResponse
from django.shortcuts import render

from apps.accounts.models import Organization
from apps.billing.costs import cost_forecast, model_code_margins
from apps.billing.services.budgets import month_start
from apps.instances.choices import HOLDS_MACHINE, InstanceStatus
from apps.instances.models import Provider
from apps.portal.context import error_page
from inventiv.errors import NotFound
from inventiv.metrics_web import cost_per_hour_now, fleet_counts

# Columns of the providers table, in lifecycle order.
STATES = [s for s in InstanceStatus if s in HOLDS_MACHINE]


@dataclass(frozen=True)
class ProviderRow:
    provider: Provider
    counts: list[int]  # per STATES

    @property
    def total(self) -> int:
        return sum(self.counts)


def _next_month(start: datetime) -> datetime:
    return start.replace(year=start.year + start.month // 12, month=start.month % 12 + 1)


@login_required
def fleet(request: HttpRequest) -> HttpResponse:
    if not request.user.is_staff:
        return error_page(request, NotFound("No such page."))
    now = datetime.now(UTC)
    start = month_start(now)
    counts, model_codes = fleet_counts()
    providers = [
        ProviderRow(provider, [counts.get((provider.name, str(s)), 0) for s in STATES])
        for provider in Provider.objects.order_by("name")
    ]
    totals = [sum(p.counts[i] for p in providers) for i in range(len(STATES))]
    margins = model_code_margins(since=start, until=now)
    org_names = dict(
        Organization.objects.filter(id__in={m.organization_id for m in margins}).values_list(
            "id", "name"
        )
    )
    by_currency: dict[str, dict[str, Decimal]] = defaultdict(lambda: defaultdict(Decimal))
    for m in margins:
        for field in ("cost", "revenue", "margin"):
            by_currency[m.currency][field] += getattr(m, field)
    context = {
        "states": [s.label for s in STATES],
        "providers": providers,
        "totals": totals,
        "model_codes": sorted(model_codes.items()),
        "cost_per_hour": Decimal(str(cost_per_hour_now())),
        "forecast": cost_forecast(now=now, month_start=start, month_end=_next_month(start)),
        "margins": [(m, org_names.get(m.organization_id, "")) for m in margins],
        "margin_totals": {c: dict(v) for c, v in sorted(by_currency.items())},
        "month": start,
        "links": {
            "admin": "/admin/",
            "flower": settings.FLOWER_URL,
            "metrics": "/metrics",
        },
    }
    return render(request, "portal/ops/fleet.html", context)

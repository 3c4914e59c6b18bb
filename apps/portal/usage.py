"""The usage figures the portal shows, from the access-checked usage selector: per day, per
model code and per key, with spend at the prices in force when each request started.

They are read from the usage records (flushed from the gateways every couple of seconds), so a
chat in the playground shows up in the charts within seconds; budgets are measured the way the
billing pass enforces them (hourly rollups, ``budget_spend``).
"""

from __future__ import annotations

from collections import defaultdict
from dataclasses import dataclass, field
from datetime import UTC, date, datetime, timedelta
from decimal import Decimal
from typing import Any

from django.db.models import Count, Sum
from django.db.models.functions import TruncDate
from django.utils import timezone

from apps.accounts.models import User
from apps.billing.models import Budget
from apps.billing.selectors import budget_list_for_user, usage_list_for_user
from apps.billing.services.budgets import budget_spend, month_start
from apps.billing.services.rollups import usage_priced

CENTS = Decimal("0.01")


@dataclass
class Totals:
    requests: int = 0
    prompt_tokens: int = 0
    completion_tokens: int = 0
    spend: dict[str, Decimal] = field(default_factory=dict)

    @property
    def tokens(self) -> int:
        return self.prompt_tokens + self.completion_tokens

    def add(self, row: dict[str, Any]) -> None:
        self.requests += row["n"]
        self.prompt_tokens += row["prompt"] or 0
        self.completion_tokens += row["completion"] or 0
        if row.get("p_currency"):
            currency = row["p_currency"]
            self.spend[currency] = self.spend.get(currency, Decimal(0)) + Decimal(row["spend"] or 0)

    @property
    def spend_text(self) -> str:
        if not self.spend:
            return "0"
        return ", ".join(f"{v.quantize(CENTS)} {c}" for c, v in sorted(self.spend.items()))


def _rows(
    user: User, organization_id: int, since: datetime, extra: dict[str, Any], *group: str
) -> list[dict[str, Any]]:
    records = usage_list_for_user(user=user, filters={"since": since, **extra}).filter(
        organization_id=organization_id
    )
    priced = usage_priced(records)
    if "day" in group:
        priced = priced.annotate(day=TruncDate("started_at", tzinfo=UTC))
    return list(
        priced.order_by()
        .values(*group, "p_currency")
        .annotate(
            n=Count("id"),
            prompt=Sum("prompt_tokens"),
            completion=Sum("completion_tokens"),
            spend=Sum("cost"),
        )
    )


def totals(
    *, user: User, organization_id: int, since: datetime, filters: dict[str, Any] | None = None
) -> Totals:
    result = Totals()
    for row in _rows(user, organization_id, since, filters or {}):
        result.add(row)
    return result


def today() -> datetime:
    return timezone.now().astimezone(UTC).replace(hour=0, minute=0, second=0, microsecond=0)


def by_day(
    *, user: User, organization_id: int, days: int = 30, filters: dict[str, Any] | None = None
) -> list[tuple[date, Totals]]:
    """One entry per day of the last ``days`` (UTC), today included, empty days too."""
    start = today() - timedelta(days=days - 1)
    grouped: dict[date, Totals] = defaultdict(Totals)
    for row in _rows(
        user,
        organization_id,
        start,
        filters or {},
        "day",
    ):
        grouped[row["day"]].add(row)
    first = start.date()
    return [(first + timedelta(days=i), grouped[first + timedelta(days=i)]) for i in range(days)]


def by_field(
    *, user: User, organization_id: int, since: datetime, name: str
) -> list[tuple[Any, Totals]]:
    """Totals per ``name`` (``model_code`` or ``api_key_id``), most tokens first."""
    grouped: dict[Any, Totals] = defaultdict(Totals)
    for row in _rows(user, organization_id, since, {}, name):
        grouped[row[name]].add(row)
    return sorted(grouped.items(), key=lambda item: -item[1].tokens)


@dataclass(frozen=True)
class BudgetView:
    budget: Budget
    spend: Decimal

    @property
    def percent(self) -> int:
        if self.budget.monthly_limit <= 0:
            return 100
        return int(self.spend * 100 / self.budget.monthly_limit)

    @property
    def left(self) -> Decimal:
        return max(self.budget.monthly_limit - self.spend, Decimal(0)).quantize(CENTS)

    @property
    def level(self) -> str:
        """``over`` at 100 %, ``warn`` past its threshold, else ``ok``."""
        if self.percent >= 100:
            return "over"
        if self.percent >= self.budget.warn_at_percent:
            return "warn"
        return "ok"


def budgets(*, user: User, organization_id: int) -> list[BudgetView]:
    since = month_start()
    return [
        BudgetView(budget=b, spend=budget_spend(budget=b, since=since).quantize(CENTS))
        for b in budget_list_for_user(user=user)
        .filter(organization_id=organization_id)
        .select_related("api_key")
    ]


def chart_series(days: list[tuple[date, Totals]]) -> dict[str, Any]:
    """The daily series as uPlot wants them (x in seconds since the epoch), for json_script."""
    currencies = sorted({c for _, t in days for c in t.spend})
    return {
        "x": [int(datetime(d.year, d.month, d.day, tzinfo=UTC).timestamp()) for d, _ in days],
        "tokens": [t.tokens for _, t in days],
        "requests": [t.requests for _, t in days],
        "spend": {c: [float(t.spend.get(c, 0)) for _, t in days] for c in currencies},
    }

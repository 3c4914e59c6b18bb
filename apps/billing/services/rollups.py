"""Metering rollups: usage per organization, key, model code and hour, with spend.

Each hour's buckets are *recomputed* from ``UsageRecord`` (unique by request id, a stream's
checkpoint superseded by its final record), never incremented: a duplicated, replayed or
superseded record changes nothing, and running the rollup twice, or two at once, gives the
same rows. Spend uses the price in force when each request started (``Price.valid_from``).
"""

from __future__ import annotations

from datetime import datetime, timedelta
from decimal import Decimal
from typing import Any

from django.db import transaction
from django.db.models import (
    Count,
    DecimalField,
    ExpressionWrapper,
    F,
    OuterRef,
    Q,
    QuerySet,
    Subquery,
    Sum,
    Value,
)
from django.db.models.functions import Coalesce, Trunc
from django.utils import timezone

from apps.billing.models import Price, UsageRecord, UsageRollup

MILLION = Decimal(1_000_000)
_MONEY: DecimalField[Decimal, Decimal] = DecimalField(max_digits=30, decimal_places=12)


def _price(field: str) -> Subquery:
    return Subquery(
        Price.objects.filter(
            model_code_id=OuterRef("model_code_id"), valid_from__lte=OuterRef("started_at")
        )
        .order_by("-valid_from")
        .values(field)[:1]
    )


def usage_priced(queryset: QuerySet[UsageRecord]) -> QuerySet[Any]:
    """Records annotated with the price in force when they started (``p_in``, ``p_out``,
    ``p_currency``; null when none) and their ``cost`` (0 when unpriced)."""
    return queryset.annotate(
        p_in=_price("input_per_million"),
        p_out=_price("output_per_million"),
        p_currency=_price("currency"),
    ).annotate(
        cost=ExpressionWrapper(
            (
                F("prompt_tokens") * Coalesce(F("p_in"), Value(Decimal(0)), output_field=_MONEY)
                + F("completion_tokens")
                * Coalesce(F("p_out"), Value(Decimal(0)), output_field=_MONEY)
            )
            / Value(MILLION),
            output_field=_MONEY,
        )
    )


def _hour(moment: datetime) -> datetime:
    return moment.replace(minute=0, second=0, microsecond=0)


def usage_rollup_hour(*, hour: datetime) -> int:
    """Recompute the buckets of one hour (UTC) from its usage records; returns how many."""
    start = _hour(hour)
    rows = (
        usage_priced(
            UsageRecord.objects.filter(
                started_at__gte=start, started_at__lt=start + timedelta(hours=1)
            )
        )
        .order_by()
        .values("organization_id", "api_key_id", "model_code_id", "model_code", "p_currency")
        .annotate(
            n=Count("id"),
            prompt=Sum("prompt_tokens"),
            completion=Sum("completion_tokens"),
            spend=Sum("cost"),
            unpriced=Count("id", filter=Q(p_in__isnull=True)),
        )
    )
    buckets: dict[tuple[int, int, int, str], UsageRollup] = {}
    for row in rows:
        bucket_key = (
            row["organization_id"],
            row["api_key_id"] or 0,
            row["model_code_id"] or 0,
            row["model_code"],
        )
        held = buckets.get(bucket_key)
        if held is None:
            held = buckets[bucket_key] = UsageRollup(
                organization_id=bucket_key[0],
                api_key_id=bucket_key[1],
                model_code_id=bucket_key[2],
                model_code=bucket_key[3],
                hour=start,
                currency="",
                spend=Decimal(0),
            )
        # A price change of currency within the hour: the bucket keeps the last priced one.
        held.currency = row["p_currency"] or held.currency
        held.requests += row["n"]
        held.prompt_tokens += row["prompt"] or 0
        held.completion_tokens += row["completion"] or 0
        held.spend += Decimal(row["spend"] or 0).quantize(Decimal("0.000000001"))
        held.unpriced_requests += row["unpriced"]
    with transaction.atomic():
        if buckets:
            UsageRollup.objects.bulk_create(
                list(buckets.values()),
                update_conflicts=True,
                unique_fields=["organization", "api_key_id", "model_code_id", "model_code", "hour"],
                update_fields=[
                    "currency",
                    "requests",
                    "prompt_tokens",
                    "completion_tokens",
                    "spend",
                    "unpriced_requests",
                    "updated_at",
                ],
            )
        # Buckets whose records all moved away (cannot happen today; kept exact anyway).
        existing = UsageRollup.objects.filter(hour=start).values_list(
            "id", "organization_id", "api_key_id", "model_code_id", "model_code"
        )
        stale = [row[0] for row in existing if tuple(row[1:]) not in buckets]
        if stale:
            UsageRollup.objects.filter(id__in=stale).delete()
    return len(buckets)


def usage_rollup(*, since: datetime | None = None, lookback: timedelta | None = None) -> int:
    """Recompute every hour that holds a record written (or superseded) since ``since``
    (default: now - ``lookback``, default 15 minutes). Idempotent; returns buckets written."""
    since = since or timezone.now() - (lookback or timedelta(minutes=15))
    hours = (
        UsageRecord.objects.filter(created_at__gte=since)
        .annotate(h=Trunc("started_at", "hour"))
        .order_by("h")
        .values_list("h", flat=True)
        .distinct()
    )
    return sum(usage_rollup_hour(hour=h) for h in list(hours))

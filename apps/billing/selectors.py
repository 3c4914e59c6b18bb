"""Reads for usage, access-checked: only the organizations the user belongs to."""

from __future__ import annotations

from datetime import UTC
from typing import Any

from django.db.models import Count, F, QuerySet, Sum
from django.db.models.functions import TruncDate

from apps.accounts.models import User
from apps.accounts.selectors import organization_ids_for_user
from apps.billing.models import Budget, Price, UsageRecord, UsageRollup
from inventiv.errors import NotFound


def _filtered(queryset: QuerySet[Any], filters: dict[str, Any] | None, *, time_field: str) -> Any:
    """The usage filters (model code name, key id, [since, until) on ``time_field``) applied."""
    filters = filters or {}
    if filters.get("model_code"):
        queryset = queryset.filter(model_code=filters["model_code"])
    if filters.get("api_key"):
        queryset = queryset.filter(api_key_id=filters["api_key"])
    if filters.get("since"):
        queryset = queryset.filter(**{f"{time_field}__gte": filters["since"]})
    if filters.get("until"):
        queryset = queryset.filter(**{f"{time_field}__lt": filters["until"]})
    return queryset


def usage_list_for_user(
    *, user: User, filters: dict[str, Any] | None = None
) -> QuerySet[UsageRecord]:
    queryset = UsageRecord.objects.filter(organization_id__in=organization_ids_for_user(user=user))
    return _filtered(queryset, filters, time_field="started_at").order_by("-started_at", "-id")


def usage_summary_for_user(
    *, user: User, filters: dict[str, Any] | None = None
) -> list[dict[str, Any]]:
    """Totals per model code."""
    rows = (
        usage_list_for_user(user=user, filters=filters)
        .order_by()
        .values("model_code")
        .annotate(
            requests=Count("id"),
            prompt_tokens=Sum("prompt_tokens"),
            completion_tokens=Sum("completion_tokens"),
            total_tokens=Sum("total_tokens"),
        )
        .order_by("model_code")
    )
    return list(rows)


def price_list_for_user(*, user: User, model_code_id: int | None = None) -> QuerySet[Price]:
    """Prices (with history, newest first) of the model codes of the user's organizations;
    every price for staff."""
    queryset = Price.objects.all()
    if not user.is_staff:
        queryset = queryset.filter(
            model_code__organization_id__in=organization_ids_for_user(user=user)
        )
    if model_code_id is not None:
        queryset = queryset.filter(model_code_id=model_code_id)
    return queryset.order_by("model_code_id", "-valid_from", "-id")


def rollup_list_for_user(
    *, user: User, filters: dict[str, Any] | None = None
) -> QuerySet[UsageRollup]:
    queryset = UsageRollup.objects.filter(organization_id__in=organization_ids_for_user(user=user))
    return _filtered(queryset, filters, time_field="hour").order_by(
        "-hour", "organization_id", "model_code", "api_key_id"
    )


def budget_list_for_user(*, user: User) -> QuerySet[Budget]:
    return (
        Budget.objects.filter(organization_id__in=organization_ids_for_user(user=user))
        .select_related("organization")
        .order_by("organization_id", F("api_key_id").asc(nulls_first=True), "id")
    )


def budget_get_for_user(*, user: User, budget_id: int) -> Budget:
    """The budget, if the user belongs to its organization; the same 404 otherwise."""
    budget = budget_list_for_user(user=user).filter(id=budget_id).first()
    if budget is None:
        raise NotFound("No such budget.")
    return budget


def usage_daily_for_user(*, user: User, filters: dict[str, Any] | None = None) -> QuerySet[Any]:
    """Rollups summed per day (UTC), organization, key, model code and currency."""
    return (
        rollup_list_for_user(user=user, filters=filters)
        .order_by()
        .annotate(day=TruncDate("hour", tzinfo=UTC))
        .values("day", "organization__slug", "api_key_id", "model_code", "currency")
        .annotate(
            requests=Sum("requests"),
            prompt_tokens=Sum("prompt_tokens"),
            completion_tokens=Sum("completion_tokens"),
            spend=Sum("spend"),
        )
        .order_by("day", "organization__slug", "model_code", "api_key_id", "currency")
    )

"""Billing in the admin: prices (a new row per change; rows are history, never edited), usage
records and rollups (read only), budgets and their alerts."""

from __future__ import annotations

from typing import Any

from django.contrib import admin
from django.core.exceptions import ValidationError
from django.forms import ModelForm
from django.http import HttpRequest

from apps.billing.models import Budget, BudgetAlert, Price, UsageRecord, UsageRollup
from apps.billing.services import price_set
from apps.billing.services.budgets import budget_delete, budget_set
from apps.billing.services.prices import price_validate
from inventiv.errors import ApplicationError


class _ReadOnly(admin.ModelAdmin):  # type: ignore[type-arg]
    def has_add_permission(self, request: HttpRequest) -> bool:
        return False

    def has_change_permission(self, request: HttpRequest, obj: Any = None) -> bool:
        return False

    def has_delete_permission(self, request: HttpRequest, obj: Any = None) -> bool:
        return False


class PriceForm(ModelForm):  # type: ignore[type-arg]
    class Meta:
        model = Price
        fields = ["model_code", "currency", "input_per_million", "output_per_million", "valid_from"]

    def clean(self) -> dict[str, Any]:
        data = super().clean() or {}
        try:
            price_validate(
                currency=data.get("currency") or "",
                input_per_million=data.get("input_per_million") or 0,
                output_per_million=data.get("output_per_million") or 0,
                valid_from=data.get("valid_from"),
            )
        except ApplicationError as exc:
            raise ValidationError({exc.param or "__all__": exc.message}) from exc
        return data


@admin.register(Price)
class PriceAdmin(admin.ModelAdmin):  # type: ignore[type-arg]
    form = PriceForm
    list_display = [
        "model_code", "currency", "input_per_million", "output_per_million", "valid_from",
    ]  # fmt: skip
    list_filter = ["currency"]
    search_fields = ["model_code__name"]

    def has_change_permission(self, request: HttpRequest, obj: Any = None) -> bool:
        return obj is None and super().has_change_permission(request, obj)

    def save_model(self, request: HttpRequest, obj: Price, form: Any, change: bool) -> None:
        saved = price_set(
            model_code=obj.model_code,
            currency=obj.currency,
            input_per_million=obj.input_per_million,
            output_per_million=obj.output_per_million,
            valid_from=obj.valid_from,
        )
        obj.pk = saved.pk


@admin.register(UsageRecord)
class UsageRecordAdmin(_ReadOnly):
    list_display = [
        "request_id", "organization", "model_code", "api_key_id", "prompt_tokens",
        "completion_tokens", "status_code", "started_at",
    ]  # fmt: skip
    list_filter = ["status_code", "endpoint"]
    search_fields = ["request_id", "model_code"]
    date_hierarchy = "started_at"


@admin.register(UsageRollup)
class UsageRollupAdmin(_ReadOnly):
    list_display = [
        "hour", "organization", "model_code", "api_key_id", "requests", "prompt_tokens",
        "completion_tokens", "spend", "currency",
    ]  # fmt: skip
    search_fields = ["model_code"]
    date_hierarchy = "hour"


@admin.register(BudgetAlert)
class BudgetAlertAdmin(_ReadOnly):
    list_display = ["budget", "month", "percent", "spend", "created_at"]


class BudgetForm(ModelForm):  # type: ignore[type-arg]
    class Meta:
        model = Budget
        fields = ["organization", "api_key", "currency", "monthly_limit", "warn_at_percent"]


@admin.register(Budget)
class BudgetAdmin(admin.ModelAdmin):  # type: ignore[type-arg]
    """Budgets are written by ``budget_set`` (so that the gateways get them at once); the
    limit and threshold are editable in the list."""

    form = BudgetForm
    list_display = ["id", "organization", "api_key", "currency", "monthly_limit", "warn_at_percent"]
    list_editable = ["monthly_limit", "warn_at_percent"]
    list_filter = ["currency"]

    def get_readonly_fields(self, request: HttpRequest, obj: Any = None) -> list[str]:
        return ["organization", "api_key"] if obj is not None else []

    def save_model(self, request: HttpRequest, obj: Budget, form: Any, change: bool) -> None:
        saved = budget_set(
            organization=obj.organization,
            api_key=obj.api_key,
            currency=obj.currency,
            monthly_limit=obj.monthly_limit,
            warn_at_percent=obj.warn_at_percent,
        )
        obj.pk = saved.pk

    def delete_model(self, request: HttpRequest, obj: Budget) -> None:
        budget_delete(budget=obj)

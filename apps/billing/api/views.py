from __future__ import annotations

import csv
from datetime import timedelta
from typing import Any

from django.http import HttpResponse
from django.utils import timezone
from drf_spectacular.types import OpenApiTypes
from drf_spectacular.utils import extend_schema, inline_serializer
from rest_framework.permissions import BasePermission, IsAdminUser, IsAuthenticated
from rest_framework.request import Request
from rest_framework.response import Response
from rest_framework.views import APIView

from apps.accounts.auth import request_user
from apps.accounts.permissions import Capability
from apps.accounts.selectors import organization_check, organization_get_for_user
from apps.billing.api.serializers import (
    BudgetInSerializer,
    BudgetOutSerializer,
    CostFilterSerializer,
    CostsOutSerializer,
    PriceFilterSerializer,
    PriceInSerializer,
    PriceOutSerializer,
    RollupOutSerializer,
    UsageFilterSerializer,
    UsageRecordOutSerializer,
    UsageSummaryOutSerializer,
)
from apps.billing.costs import cost_forecast, instance_costs, model_code_margins
from apps.billing.models import Budget, BudgetAlert
from apps.billing.selectors import (
    budget_get_for_user,
    budget_list_for_user,
    price_list_for_user,
    rollup_list_for_user,
    usage_daily_for_user,
    usage_list_for_user,
    usage_summary_for_user,
)
from apps.billing.services import price_set
from apps.billing.services.budgets import budget_delete, budget_set, budget_spend, month_start
from apps.gateway.models import ApiKey
from apps.models.models import LlmModel
from inventiv.errors import ApplicationError, NotFound
from inventiv.pagination import default_pagination_class, paginated_response
from inventiv.params import path_id
from inventiv.schema import errors


class UsageListView(APIView):
    """Usage records of the organizations you belong to, newest first."""

    pagination_class = default_pagination_class()  # for the schema: the list is paginated

    @extend_schema(
        parameters=[UsageFilterSerializer],
        responses={200: UsageRecordOutSerializer(many=True), **errors(400)},
    )
    def get(self, request: Request) -> Response:
        filters = UsageFilterSerializer(data=request.query_params)
        filters.is_valid(raise_exception=True)
        queryset = usage_list_for_user(user=request_user(request), filters=filters.validated_data)
        return paginated_response(request, self, queryset, UsageRecordOutSerializer)


class UsageSummaryView(APIView):
    """Totals per model code over the filtered records."""

    @extend_schema(
        parameters=[UsageFilterSerializer],
        responses={
            200: inline_serializer(
                "UsageSummaryList", {"data": UsageSummaryOutSerializer(many=True)}
            ),
            **errors(400),
        },
    )
    def get(self, request: Request) -> Response:
        filters = UsageFilterSerializer(data=request.query_params)
        filters.is_valid(raise_exception=True)
        rows = usage_summary_for_user(user=request_user(request), filters=filters.validated_data)
        return Response({"data": UsageSummaryOutSerializer(rows, many=True).data})


class PriceListView(APIView):
    """Prices per million tokens, with history (newest first per model code). Operators (staff)
    set a price from now or a later instant; served usage keeps the price it was served at."""

    pagination_class = default_pagination_class()

    def get_permissions(self) -> list[BasePermission]:
        if self.request.method == "POST":
            return [IsAdminUser()]
        return [IsAuthenticated()]

    @extend_schema(
        parameters=[PriceFilterSerializer],
        responses={200: PriceOutSerializer(many=True), **errors(400)},
    )
    def get(self, request: Request) -> Response:
        filters = PriceFilterSerializer(data=request.query_params)
        filters.is_valid(raise_exception=True)
        queryset = price_list_for_user(
            user=request_user(request), model_code_id=filters.validated_data.get("model_code")
        )
        return paginated_response(request, self, queryset, PriceOutSerializer)

    @extend_schema(
        request=PriceInSerializer, responses={201: PriceOutSerializer, **errors(400, 404, 409)}
    )
    def post(self, request: Request) -> Response:
        data = PriceInSerializer(data=request.data)
        data.is_valid(raise_exception=True)
        values = dict(data.validated_data)
        model_code = LlmModel.objects.filter(id=values.pop("model_code")).first()
        if model_code is None:
            raise NotFound("No such model code.", param="model_code")
        price = price_set(model_code=model_code, **values)
        return Response(PriceOutSerializer(price).data, status=201)


class RollupListView(APIView):
    """Hourly usage and spend per organization, key and model code (your organizations)."""

    pagination_class = default_pagination_class()

    @extend_schema(
        parameters=[UsageFilterSerializer],
        responses={200: RollupOutSerializer(many=True), **errors(400)},
    )
    def get(self, request: Request) -> Response:
        filters = UsageFilterSerializer(data=request.query_params)
        filters.is_valid(raise_exception=True)
        queryset = rollup_list_for_user(user=request_user(request), filters=filters.validated_data)
        return paginated_response(request, self, queryset, RollupOutSerializer)


def _budget_out(budget: Budget) -> dict[str, Any]:
    spend = budget_spend(budget=budget)
    alerts = sorted(
        BudgetAlert.objects.filter(budget=budget, month=month_start().date()).values_list(
            "percent", flat=True
        )
    )
    state = {"budget": budget, "spend": spend, "blocked": spend >= budget.monthly_limit}
    return dict(BudgetOutSerializer({**state, "alerts": alerts}).data)


class BudgetListView(APIView):
    """Monthly budgets (UTC calendar months) of your organizations and their keys, with the
    month's spend, whether billing blocks them, and the warning thresholds crossed. Owners
    set them (``billing.manage``); the gateways refuse past them with 429 insufficient_quota."""

    @extend_schema(
        responses={200: inline_serializer("BudgetList", {"data": BudgetOutSerializer(many=True)})}
    )
    def get(self, request: Request) -> Response:
        budgets = budget_list_for_user(user=request_user(request))
        return Response({"data": [_budget_out(b) for b in budgets]})

    @extend_schema(
        request=BudgetInSerializer, responses={201: BudgetOutSerializer, **errors(400, 404)}
    )
    def post(self, request: Request) -> Response:
        data = BudgetInSerializer(data=request.data)
        data.is_valid(raise_exception=True)
        values = dict(data.validated_data)
        organization = organization_get_for_user(
            user=request_user(request),
            slug=values.pop("organization", None),
            capability=Capability.BILLING_MANAGE,
        )
        api_key = None
        if "api_key" in values:
            api_key = ApiKey.objects.filter(
                id=values.pop("api_key"), organization=organization
            ).first()
            if api_key is None:
                raise NotFound("No such API key.", param="api_key")
        budget = budget_set(organization=organization, api_key=api_key, **values)
        return Response(_budget_out(budget), status=201)


class BudgetDetailView(APIView):
    @extend_schema(responses={204: None, **errors(404)})
    def delete(self, request: Request, budget_id: str) -> Response:
        user = request_user(request)
        budget = budget_get_for_user(
            user=user, budget_id=path_id(budget_id, message="No such budget.")
        )
        organization_check(
            user=user, organization_id=budget.organization_id, capability=Capability.BILLING_MANAGE
        )
        budget_delete(budget=budget)
        return Response(status=204)


class CostsView(APIView):
    """For operators (staff): machine cost per instance and model code over a window (default:
    this month to now), revenue at the model codes' prices, cost per million tokens, margin,
    and the month's forecast. See docs/billing.md for how cost accrues."""

    permission_classes = [IsAdminUser]

    @extend_schema(
        parameters=[CostFilterSerializer], responses={200: CostsOutSerializer, **errors(400)}
    )
    def get(self, request: Request) -> Response:
        filters = CostFilterSerializer(data=request.query_params)
        filters.is_valid(raise_exception=True)
        now = timezone.now()
        start = month_start(now)
        end = (start + timedelta(days=32)).replace(day=1)
        since = filters.validated_data.get("since", start)
        until = filters.validated_data.get("until", now)
        if until <= since:
            raise ApplicationError("until must be after since.", param="until")
        body = {
            "since": since,
            "until": until,
            "instances": instance_costs(since=since, until=until),
            "model_codes": model_code_margins(since=since, until=until),
            **cost_forecast(now=now, month_start=start, month_end=end),
        }
        return Response(CostsOutSerializer(body).data)


CSV_COLUMNS = [
    "day", "organization", "api_key_id", "model_code", "currency", "requests", "prompt_tokens",
    "completion_tokens", "spend",
]  # fmt: skip


class UsageExportView(APIView):
    """Usage per day (UTC), key and model code of your organizations, as CSV (one row per
    day, organization, key, model code and currency; filters as for the rollups)."""

    @extend_schema(
        parameters=[UsageFilterSerializer],
        responses={(200, "text/csv"): OpenApiTypes.STR, **errors(400)},
    )
    def get(self, request: Request) -> HttpResponse:
        filters = UsageFilterSerializer(data=request.query_params)
        filters.is_valid(raise_exception=True)
        rows = usage_daily_for_user(user=request_user(request), filters=filters.validated_data)
        response = HttpResponse(content_type="text/csv; charset=utf-8")
        response["Content-Disposition"] = 'attachment; filename="usage.csv"'
        writer = csv.writer(response)
        writer.writerow(CSV_COLUMNS)
        for row in rows.iterator():
            writer.writerow(
                [
                    row["day"].isoformat(),
                    row["organization__slug"],
                    row["api_key_id"] or "",
                    row["model_code"],
                    row["currency"],
                    row["requests"],
                    row["prompt_tokens"],
                    row["completion_tokens"],
                    row["spend"],
                ]
            )
        return response

from __future__ import annotations

from drf_spectacular.utils import extend_schema, inline_serializer
from rest_framework.permissions import BasePermission, IsAdminUser, IsAuthenticated
from rest_framework.request import Request
from rest_framework.response import Response
from rest_framework.views import APIView

from apps.accounts.auth import request_user
from apps.billing.api.serializers import (
    PriceFilterSerializer,
    PriceInSerializer,
    PriceOutSerializer,
    RollupOutSerializer,
    UsageFilterSerializer,
    UsageRecordOutSerializer,
    UsageSummaryOutSerializer,
)
from apps.billing.selectors import (
    price_list_for_user,
    rollup_list_for_user,
    usage_list_for_user,
    usage_summary_for_user,
)
from apps.billing.services import price_set
from apps.models.models import LlmModel
from inventiv.errors import NotFound
from inventiv.pagination import default_pagination_class, paginated_response
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

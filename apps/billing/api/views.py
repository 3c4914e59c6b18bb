from __future__ import annotations

from drf_spectacular.utils import extend_schema, inline_serializer
from rest_framework.request import Request
from rest_framework.response import Response
from rest_framework.views import APIView

from apps.accounts.auth import request_user
from apps.billing.api.serializers import (
    UsageFilterSerializer,
    UsageRecordOutSerializer,
    UsageSummaryOutSerializer,
)
from apps.billing.selectors import usage_list_for_user, usage_summary_for_user
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

from __future__ import annotations

from drf_spectacular.utils import extend_schema
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
from inventiv.pagination import paginated_response


class UsageListView(APIView):
    """Usage records of the organizations you belong to, newest first."""

    @extend_schema(
        parameters=[UsageFilterSerializer], responses=UsageRecordOutSerializer(many=True)
    )
    def get(self, request: Request) -> Response:
        filters = UsageFilterSerializer(data=request.query_params)
        filters.is_valid(raise_exception=True)
        queryset = usage_list_for_user(user=request_user(request), filters=filters.validated_data)
        return paginated_response(request, self, queryset, UsageRecordOutSerializer)


class UsageSummaryView(APIView):
    """Totals per model code over the filtered records."""

    @extend_schema(
        parameters=[UsageFilterSerializer], responses=UsageSummaryOutSerializer(many=True)
    )
    def get(self, request: Request) -> Response:
        filters = UsageFilterSerializer(data=request.query_params)
        filters.is_valid(raise_exception=True)
        rows = usage_summary_for_user(user=request_user(request), filters=filters.validated_data)
        return Response({"data": UsageSummaryOutSerializer(rows, many=True).data})

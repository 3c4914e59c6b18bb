from __future__ import annotations

from typing import Any

from drf_spectacular.utils import OpenApiParameter, extend_schema
from rest_framework import status, viewsets
from rest_framework.decorators import action
from rest_framework.request import Request
from rest_framework.response import Response

from apps.accounts.auth import request_user
from apps.accounts.permissions import Capability
from apps.accounts.selectors import organization_check, organization_get_for_user
from apps.gateway import services
from apps.gateway.api.serializers import (
    ApiKeyCreatedOutSerializer,
    ApiKeyInSerializer,
    ApiKeyOutSerializer,
)
from apps.gateway.models import ApiKey
from apps.gateway.selectors import api_key_get_for_user, api_key_list_for_user
from apps.models.models import LlmModel
from inventiv.errors import ApplicationError
from inventiv.pagination import default_pagination_class, paginated_response
from inventiv.params import path_id, query_text
from inventiv.schema import errors


class ApiKeyViewSet(viewsets.ViewSet):
    """OpenAI-compatible API keys of your organizations. The key itself is shown once, in the
    answer to create and rotate. Writes need the owner or admin role."""

    queryset = ApiKey.objects.none()  # for the schema only; reads go through selectors
    pagination_class = default_pagination_class()  # for the schema: lists are paginated

    def _get(self, request: Request, pk: Any, *, manage: bool = False) -> ApiKey:
        user = request_user(request)
        key = api_key_get_for_user(user=user, key_id=path_id(pk, message="No such API key."))
        if manage:
            organization_check(
                user=user, organization_id=key.organization_id, capability=Capability.KEYS_MANAGE
            )
        return key

    @extend_schema(
        parameters=[OpenApiParameter("organization", str, description="An organization's slug.")],
        responses={200: ApiKeyOutSerializer(many=True), **errors(400)},
    )
    def list(self, request: Request) -> Response:
        queryset = api_key_list_for_user(user=request_user(request))
        if org := query_text(request.query_params, "organization"):
            queryset = queryset.filter(organization__slug=org)
        return paginated_response(request, self, queryset, ApiKeyOutSerializer)

    @extend_schema(
        request=ApiKeyInSerializer,
        responses={
            201: ApiKeyCreatedOutSerializer,
            **errors(404, s404="`not_found`: no such organization (`param`: organization)."),
        },
    )
    def create(self, request: Request) -> Response:
        data = ApiKeyInSerializer(data=request.data)
        data.is_valid(raise_exception=True)
        values = dict(data.validated_data)
        user = request_user(request)
        org = organization_get_for_user(
            user=user, slug=values.pop("organization", None), capability=Capability.KEYS_MANAGE
        )
        ids = set(values.pop("model_codes"))
        models = list(LlmModel.objects.filter(organization=org, pk__in=ids))
        if len(models) != len(ids):
            raise ApplicationError(
                "Unknown model code in this organization.",
                param="model_codes",
            )
        key, plaintext = services.api_key_create(
            organization=org, created_by=user, model_codes=models, **values
        )
        key = api_key_get_for_user(user=user, key_id=key.pk)
        out = ApiKeyCreatedOutSerializer(key, context={"plaintext": plaintext})
        return Response(out.data, status=status.HTTP_201_CREATED)

    @extend_schema(responses=ApiKeyOutSerializer)
    def retrieve(self, request: Request, pk: Any = None) -> Response:
        return Response(ApiKeyOutSerializer(self._get(request, pk)).data)

    @extend_schema(request=None, responses=ApiKeyOutSerializer)
    @action(detail=True, methods=["post"])
    def revoke(self, request: Request, pk: Any = None) -> Response:
        key = services.api_key_revoke(key=self._get(request, pk, manage=True))
        return Response(ApiKeyOutSerializer(key).data)

    @extend_schema(responses={204: None})
    def destroy(self, request: Request, pk: Any = None) -> Response:
        """Same as revoke (keys are kept for the usage history)."""
        services.api_key_revoke(key=self._get(request, pk, manage=True))
        return Response(status=status.HTTP_204_NO_CONTENT)

    @extend_schema(
        request=None,
        responses={
            201: ApiKeyCreatedOutSerializer,
            **errors(400, s400="`key_revoked`: a revoked key cannot rotate."),
        },
    )
    @action(detail=True, methods=["post"])
    def rotate(self, request: Request, pk: Any = None) -> Response:
        new, plaintext = services.api_key_rotate(
            key=self._get(request, pk, manage=True), created_by=request_user(request)
        )
        new = api_key_get_for_user(user=request_user(request), key_id=new.pk)
        out = ApiKeyCreatedOutSerializer(new, context={"plaintext": plaintext})
        return Response(out.data, status=status.HTTP_201_CREATED)

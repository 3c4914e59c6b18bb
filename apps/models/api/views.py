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
from apps.models import services
from apps.models.api.serializers import (
    DeployInSerializer,
    ModelCodeInSerializer,
    ModelCodeOutSerializer,
    ModelCodeUpdateSerializer,
    ReplicasInSerializer,
    ScalingDecisionOutSerializer,
    ScalingPolicyInSerializer,
)
from apps.models.models import LlmModel, ScalingDecision
from apps.models.selectors import model_get_for_user, model_list_for_user
from inventiv.pagination import default_pagination_class, paginated_response
from inventiv.params import path_id, query_text
from inventiv.schema import errors


class ModelCodeViewSet(viewsets.ViewSet):
    """Model codes: a public name mapped to an engine model id and hardware needs. Writes need
    the owner or admin role in the model code's organization."""

    queryset = LlmModel.objects.none()  # for the schema only; reads go through selectors
    pagination_class = default_pagination_class()  # for the schema: lists are paginated

    # The capability a write needs (apps/accounts/permissions.py): deploying and scaling are
    # deployments; the rest changes the model code itself.
    capabilities: dict[str, Capability] = {
        "deploy": Capability.DEPLOYMENTS_MANAGE,
        "replicas": Capability.DEPLOYMENTS_MANAGE,
        "decommission": Capability.DEPLOYMENTS_MANAGE,
        "scaling": Capability.DEPLOYMENTS_MANAGE,
    }

    def _get(self, request: Request, pk: Any, *, manage: bool = False) -> LlmModel:
        user = request_user(request)
        model = model_get_for_user(
            user=user, model_code_id=path_id(pk, message="No such model code.")
        )
        if manage:
            organization_check(
                user=user,
                organization_id=model.organization_id,
                capability=self.capabilities.get(self.action, Capability.MODELS_MANAGE),
            )
        return model

    @extend_schema(
        parameters=[
            OpenApiParameter("organization", str, description="An organization's slug."),
            OpenApiParameter("name", str, description="A model code's name."),
        ],
        responses={200: ModelCodeOutSerializer(many=True), **errors(400)},
    )
    def list(self, request: Request) -> Response:
        queryset = model_list_for_user(user=request_user(request))
        if org := query_text(request.query_params, "organization"):
            queryset = queryset.filter(organization__slug=org)
        if name := query_text(request.query_params, "name"):
            queryset = queryset.filter(name=name)
        return paginated_response(request, self, queryset, ModelCodeOutSerializer)

    @extend_schema(
        request=ModelCodeInSerializer,
        responses={
            201: ModelCodeOutSerializer,
            **errors(404, 409, s404="`not_found`: no such organization (`param`: organization)."),
        },
    )
    def create(self, request: Request) -> Response:
        data = ModelCodeInSerializer(data=request.data)
        data.is_valid(raise_exception=True)
        values = dict(data.validated_data)
        org = organization_get_for_user(
            user=request_user(request),
            slug=values.pop("organization", None),
            capability=Capability.MODELS_MANAGE,
        )
        model = services.model_create(organization=org, **values)
        return Response(ModelCodeOutSerializer(model).data, status=status.HTTP_201_CREATED)

    @extend_schema(responses=ModelCodeOutSerializer)
    def retrieve(self, request: Request, pk: Any = None) -> Response:
        return Response(ModelCodeOutSerializer(self._get(request, pk)).data)

    @extend_schema(
        request=ModelCodeUpdateSerializer, responses={200: ModelCodeOutSerializer, **errors(409)}
    )
    def partial_update(self, request: Request, pk: Any = None) -> Response:
        model = self._get(request, pk, manage=True)
        data = ModelCodeUpdateSerializer(data=request.data)
        data.is_valid(raise_exception=True)
        model = services.model_update(model=model, **data.validated_data)
        return Response(ModelCodeOutSerializer(model).data)

    @extend_schema(responses={204: None, **errors(409)})
    def destroy(self, request: Request, pk: Any = None) -> Response:
        services.model_delete(model=self._get(request, pk, manage=True))
        return Response(status=status.HTTP_204_NO_CONTENT)

    @extend_schema(
        request=DeployInSerializer, responses={202: ModelCodeOutSerializer, **errors(409)}
    )
    @action(detail=True, methods=["post"])
    def deploy(self, request: Request, pk: Any = None) -> Response:
        model = self._get(request, pk, manage=True)
        data = DeployInSerializer(data=request.data)
        data.is_valid(raise_exception=True)
        model = services.model_deploy(
            model=model,
            replicas=data.validated_data.get("replicas"),
            by=request_user(request).email,
        )
        return Response(ModelCodeOutSerializer(model).data, status=status.HTTP_202_ACCEPTED)

    @extend_schema(
        request=ReplicasInSerializer, responses={202: ModelCodeOutSerializer, **errors(409)}
    )
    @action(detail=True, methods=["post"])
    def replicas(self, request: Request, pk: Any = None) -> Response:
        model = self._get(request, pk, manage=True)
        data = ReplicasInSerializer(data=request.data)
        data.is_valid(raise_exception=True)
        model = services.model_set_replicas(model=model, replicas=data.validated_data["replicas"])
        return Response(ModelCodeOutSerializer(model).data, status=status.HTTP_202_ACCEPTED)

    @extend_schema(request=None, responses={202: ModelCodeOutSerializer, **errors(409)})
    @action(detail=True, methods=["post"])
    def decommission(self, request: Request, pk: Any = None) -> Response:
        model = services.model_decommission(
            model=self._get(request, pk, manage=True), by=request_user(request).email
        )
        return Response(ModelCodeOutSerializer(model).data, status=status.HTTP_202_ACCEPTED)

    @extend_schema(
        request=ScalingPolicyInSerializer, responses={200: ModelCodeOutSerializer, **errors(409)}
    )
    @action(detail=True, methods=["patch"])
    def scaling(self, request: Request, pk: Any = None) -> Response:
        """Change the scaling policy (docs/autoscaling.md); only the fields given change."""
        model = self._get(request, pk, manage=True)
        data = ScalingPolicyInSerializer(data=request.data)
        data.is_valid(raise_exception=True)
        values = dict(data.validated_data)
        if "scale_schedules" in values:
            values["scale_schedules"] = [dict(item) for item in values["scale_schedules"]]
        model = services.model_set_scaling_policy(model=model, **values)
        return Response(ModelCodeOutSerializer(model).data)

    @extend_schema(responses={200: ScalingDecisionOutSerializer(many=True)})
    @action(detail=True, methods=["get"], url_path="scaling-decisions")
    def scaling_decisions(self, request: Request, pk: Any = None) -> Response:
        """The autoscaler's decisions for this model code, newest first."""
        model = self._get(request, pk)
        queryset = ScalingDecision.objects.filter(model_code=model).order_by("-created_at", "-id")
        return paginated_response(request, self, queryset, ScalingDecisionOutSerializer)

from __future__ import annotations

from typing import Any

from drf_spectacular.utils import extend_schema
from rest_framework import serializers, status, viewsets
from rest_framework.decorators import action
from rest_framework.permissions import IsAdminUser
from rest_framework.request import Request
from rest_framework.response import Response
from rest_framework.views import APIView

from apps.accounts.auth import request_user
from apps.accounts.permissions import Capability
from apps.accounts.selectors import organization_check
from apps.instances.api.serializers import InstanceDetailOutSerializer, InstanceOutSerializer
from apps.instances.models import Instance
from apps.instances.orchestrator import cluster_status
from apps.instances.selectors import instance_get_for_user, instance_list_for_user
from apps.instances.services import instance_drain, instance_request_termination
from inventiv.errors import Conflict
from inventiv.pagination import default_pagination_class, paginated_response
from inventiv.params import IdField, query_id, query_text
from inventiv.schema import errors


class InstanceFilterSerializer(serializers.Serializer):  # type: ignore[type-arg]
    """The list's query filters (documentation: the view reads them itself)."""

    model_code = IdField(required=False, help_text="A model code's id.")
    status = serializers.CharField(
        required=False, help_text="Statuses, comma-separated (e.g. `ready,draining`)."
    )
    include_archived = serializers.ChoiceField(
        choices=["1", "true", "0", "false"], required=False, help_text="Default: false."
    )


class InstanceViewSet(viewsets.ViewSet):
    """Machines serving model codes, with their history. Drain and terminate need the owner or
    admin role."""

    queryset = Instance.objects.none()  # for the schema only; reads go through selectors
    pagination_class = default_pagination_class()  # for the schema: lists are paginated

    def _get(self, request: Request, pk: Any, *, manage: bool = False) -> Instance:
        instance = instance_get_for_user(user=request_user(request), instance_id=str(pk))
        if manage:
            organization_check(
                user=request_user(request),
                organization_id=instance.organization_id,
                capability=Capability.DEPLOYMENTS_MANAGE,
            )
        return instance

    @extend_schema(
        parameters=[InstanceFilterSerializer],
        responses={200: InstanceOutSerializer(many=True), **errors(400)},
    )
    def list(self, request: Request) -> Response:
        queryset = instance_list_for_user(user=request_user(request))
        params = request.query_params
        if (model_code_id := query_id(params, "model_code")) is not None:
            queryset = queryset.filter(llm_model_id=model_code_id)
        if wanted := query_text(params, "status"):
            queryset = queryset.filter(status__in=wanted.split(","))
        if params.get("include_archived") not in ("1", "true"):
            queryset = queryset.filter(archived=False)
        return paginated_response(request, self, queryset, InstanceOutSerializer)

    @extend_schema(responses=InstanceDetailOutSerializer)
    def retrieve(self, request: Request, pk: Any = None) -> Response:
        instance = self._get(request, pk)
        return Response(InstanceDetailOutSerializer(instance).data)

    @extend_schema(request=None, responses={202: InstanceOutSerializer, **errors(409)})
    @action(detail=True, methods=["post"])
    def drain(self, request: Request, pk: Any = None) -> Response:
        instance = self._get(request, pk, manage=True)
        instance_drain(instance=instance, reason=f"drain requested by {request.user}")
        instance.refresh_from_db()
        return Response(InstanceOutSerializer(instance).data, status=status.HTTP_202_ACCEPTED)

    @extend_schema(request=None, responses={202: InstanceOutSerializer, **errors(409)})
    @action(detail=True, methods=["post"])
    def terminate(self, request: Request, pk: Any = None) -> Response:
        instance = self._get(request, pk, manage=True)
        if instance.status in ("terminating", "terminated"):
            return Response(InstanceOutSerializer(instance).data, status=status.HTTP_202_ACCEPTED)
        if not instance_request_termination(
            instance=instance, reason=f"terminate requested by {request.user}"
        ):
            raise Conflict(f"The instance changed status ({instance.status}); try again.")
        instance.refresh_from_db()
        return Response(InstanceOutSerializer(instance).data, status=status.HTTP_202_ACCEPTED)


class _LastReconcileSerializer(serializers.Serializer):  # type: ignore[type-arg]
    at = serializers.DateTimeField(allow_null=True)
    summary = serializers.DictField()


class ClusterStatusOutSerializer(serializers.Serializer):  # type: ignore[type-arg]
    """The shape of ``cluster_status()`` (for the schema)."""

    instances_by_status = serializers.DictField(child=serializers.IntegerField())
    instances_by_provider = serializers.DictField(
        child=serializers.DictField(child=serializers.IntegerField())
    )
    instances_by_model_code = serializers.DictField(
        child=serializers.DictField(child=serializers.IntegerField())
    )
    queue_depth = serializers.IntegerField(allow_null=True)
    last_reconcile = _LastReconcileSerializer()


class ClusterStatusView(APIView):
    """Staff only: instances by state, provider and model code; queue depth; last reconcile."""

    permission_classes = [IsAdminUser]

    @extend_schema(responses=ClusterStatusOutSerializer)
    def get(self, request: Request) -> Response:
        return Response(cluster_status())

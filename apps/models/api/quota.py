"""``/api/v1/organizations/{slug}/scaling-quota/``: an organization's scaling quota (the ceiling
on GPUs and instances that autoscaling never exceeds, docs/autoscaling.md). Every member may
read it, with what counts against it now; only operators (staff) may set it: it caps what
the platform spends on the organization, so the organization's own owners may not raise it."""

from __future__ import annotations

from drf_spectacular.utils import extend_schema
from rest_framework import serializers
from rest_framework.request import Request
from rest_framework.response import Response
from rest_framework.views import APIView

from apps.accounts.auth import request_user
from apps.accounts.models import Organization, User
from apps.accounts.permissions import Capability
from apps.accounts.selectors import organization_get_for_user
from apps.models import services
from apps.models.models import ScalingQuota
from inventiv.errors import Forbidden, NotFound
from inventiv.schema import errors


def _ceiling() -> serializers.IntegerField:
    return serializers.IntegerField(
        min_value=0, max_value=100_000, allow_null=True, help_text="null: no ceiling."
    )


class ScalingQuotaInSerializer(serializers.Serializer):
    max_gpus = _ceiling()
    max_instances = _ceiling()


class ScalingQuotaOutSerializer(serializers.Serializer):
    organization = serializers.SlugField()
    max_gpus = serializers.IntegerField(allow_null=True)
    max_instances = serializers.IntegerField(allow_null=True)
    used_gpus = serializers.IntegerField(help_text="GPUs of the deployed model codes' replicas.")
    used_instances = serializers.IntegerField(help_text="Desired replicas, deployed codes.")


def _organization(user: User, slug: str) -> Organization:
    """Operators see every organization; others only theirs (404 for the rest)."""
    if user.is_staff:
        found = Organization.objects.filter(slug=slug).first()
        if found is None:
            raise NotFound("No such organization.", param="slug")
        return found
    return organization_get_for_user(user=user, slug=slug, capability=Capability.READ)


def _out(organization: Organization) -> dict[str, object]:
    quota = ScalingQuota.objects.filter(organization=organization).first()
    return {
        "organization": organization.slug,
        "max_gpus": quota.max_gpus if quota else None,
        "max_instances": quota.max_instances if quota else None,
        **services.scaling_quota_usage(organization=organization),
    }


class ScalingQuotaView(APIView):
    @extend_schema(responses={200: ScalingQuotaOutSerializer, **errors(404)})
    def get(self, request: Request, slug: str) -> Response:
        return Response(_out(_organization(request_user(request), slug)))

    @extend_schema(
        request=ScalingQuotaInSerializer,
        responses={200: ScalingQuotaOutSerializer, **errors(400, 403, 404)},
    )
    def put(self, request: Request, slug: str) -> Response:
        """Operators only: set both ceilings (null clears one)."""
        user = request_user(request)
        organization = _organization(user, slug)
        if not user.is_staff:
            raise Forbidden("Only an operator (staff) may set an organization's scaling quota.")
        data = ScalingQuotaInSerializer(data=request.data)
        data.is_valid(raise_exception=True)
        services.scaling_quota_set(organization=organization, **data.validated_data)
        return Response(_out(organization))

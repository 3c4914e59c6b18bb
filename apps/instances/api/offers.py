"""Offers for a model code: what it can run on (provider, zone, instance type), with price and
live availability, cheapest first. Read-only; the model code is access-checked."""

from __future__ import annotations

from drf_spectacular.utils import OpenApiParameter, extend_schema
from rest_framework import serializers
from rest_framework.request import Request
from rest_framework.response import Response
from rest_framework.views import APIView

from apps.accounts.auth import request_user
from apps.instances.models import InstanceType, Provider
from apps.instances.providers.matching import offers_for_model
from apps.instances.providers.sizing import needs_for_model
from apps.models.selectors import model_get_for_user
from inventiv.errors import NotFound
from inventiv.params import path_id, query_id, query_text
from inventiv.schema import errors


class OfferSerializer(serializers.Serializer):  # type: ignore[type-arg]
    provider_id = serializers.IntegerField()
    provider_name = serializers.CharField()
    provider_kind = serializers.CharField()
    instance_type_id = serializers.IntegerField(allow_null=True)
    instance_type_code = serializers.CharField()
    zone = serializers.CharField()
    gpu_model = serializers.CharField()
    gpu_count = serializers.IntegerField()
    vram_per_gpu_gb = serializers.IntegerField()
    hourly_price = serializers.DecimalField(max_digits=10, decimal_places=4)
    currency = serializers.CharField()
    availability = serializers.CharField()


class OffersOutSerializer(serializers.Serializer):  # type: ignore[type-arg]
    needs = serializers.CharField()
    offers = OfferSerializer(many=True)


class ModelOffersView(APIView):
    """``GET /api/v1/models/{id}/offers/?provider=&instance_type=&zone=``"""

    @extend_schema(
        parameters=[
            OpenApiParameter("provider", int, required=False, description="A provider's id."),
            OpenApiParameter(
                "instance_type", int, required=False, description="An instance type's id."
            ),
            OpenApiParameter("zone", str, required=False),
        ],
        responses={
            200: OffersOutSerializer,
            **errors(400, 404, s404="`not_found`: no such model code, provider or instance type."),
        },
    )
    def get(self, request: Request, model_code_id: int) -> Response:
        model = model_get_for_user(
            user=request_user(request),
            model_code_id=path_id(model_code_id, message="No such model code."),
        )
        params = request.query_params
        provider = None
        instance_type = None
        if (provider_id := query_id(params, "provider")) is not None:
            provider = Provider.objects.filter(id=provider_id).first()
            if provider is None:
                raise NotFound("No such provider.", param="provider")
        if (instance_type_id := query_id(params, "instance_type")) is not None:
            instance_type = InstanceType.objects.filter(id=instance_type_id).first()
            if instance_type is None:
                raise NotFound("No such instance type.", param="instance_type")
        offers = offers_for_model(
            model, provider=provider, instance_type=instance_type, zone=query_text(params, "zone")
        )
        return Response(
            OffersOutSerializer(
                {"needs": needs_for_model(model).explanation, "offers": offers}
            ).data
        )

"""``/api/v1/organizations/{slug}/hugging-face-token/``: an organization's Hugging Face token,
write-only. GET says whether one is set (never the token); PUT sets it; DELETE forgets it.
Owners and admins only; a stranger gets the same 404 as for a missing organization."""

from __future__ import annotations

from drf_spectacular.utils import extend_schema
from rest_framework import serializers, status
from rest_framework.request import Request
from rest_framework.response import Response
from rest_framework.views import APIView

from apps.accounts.auth import request_user
from apps.accounts.selectors import organization_get_for_user
from apps.models import services
from apps.models.models import HubToken
from inventiv.schema import errors


class HubTokenInSerializer(serializers.Serializer):
    token = serializers.CharField(
        max_length=256, trim_whitespace=False, write_only=True, help_text="hf_..."
    )


class HubTokenOutSerializer(serializers.Serializer):
    configured = serializers.BooleanField()
    hint = serializers.CharField(help_text="The token's last four characters, or empty.")
    updated_at = serializers.DateTimeField(allow_null=True)


def _out(hub_token: HubToken | None) -> dict[str, object]:
    return {
        "configured": hub_token is not None,
        "hint": hub_token.hint if hub_token else "",
        "updated_at": hub_token.updated_at if hub_token else None,
    }


class HubTokenView(APIView):
    @extend_schema(responses={200: HubTokenOutSerializer, **errors(403, 404)})
    def get(self, request: Request, slug: str) -> Response:
        org = organization_get_for_user(user=request_user(request), slug=slug, manage=True)
        return Response(_out(HubToken.objects.filter(organization=org).first()))

    @extend_schema(
        request=HubTokenInSerializer,
        responses={200: HubTokenOutSerializer, **errors(400, 403, 404)},
    )
    def put(self, request: Request, slug: str) -> Response:
        user = request_user(request)
        org = organization_get_for_user(user=user, slug=slug, manage=True)
        # The service checks the raw value: DRF's CharField would turn a number into a string.
        token = request.data.get("token") if isinstance(request.data, dict) else None
        hub_token = services.hub_token_set(organization=org, token=token, by=user.email)
        return Response(_out(hub_token))

    @extend_schema(request=None, responses={204: None, **errors(403, 404)})
    def delete(self, request: Request, slug: str) -> Response:
        org = organization_get_for_user(user=request_user(request), slug=slug, manage=True)
        services.hub_token_delete(organization=org)
        return Response(status=status.HTTP_204_NO_CONTENT)

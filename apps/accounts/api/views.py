from typing import Any

from drf_spectacular.utils import extend_schema
from rest_framework import status, viewsets
from rest_framework.decorators import action
from rest_framework.request import Request
from rest_framework.response import Response
from rest_framework.views import APIView

from apps.accounts.api.serializers import (
    AccessTokenCreatedOutSerializer,
    AccessTokenInSerializer,
    AccessTokenOutSerializer,
    MeOutSerializer,
)
from apps.accounts.auth import request_sso, request_user
from apps.accounts.models import Membership, PersonalAccessToken
from apps.accounts.services import access_token_create, access_token_revoke
from inventiv.errors import NotFound
from inventiv.pagination import default_pagination_class, paginated_response
from inventiv.params import path_id


class MeView(APIView):
    """The signed-in user and the organizations they belong to, with their role in each."""

    @extend_schema(responses=MeOutSerializer)
    def get(self, request: Request) -> Response:
        user = request_user(request)
        memberships = Membership.objects.select_related("organization").filter(user=user)
        data = {
            "email": user.email,
            "name": user.name,
            "is_staff": user.is_staff,
            "organizations": [
                {
                    "slug": m.organization.slug,
                    "name": m.organization.name,
                    "personal": m.organization.personal,
                    "role": m.role,
                }
                for m in memberships.order_by("organization_id")
            ],
        }
        return Response(MeOutSerializer(data).data)


class AccessTokenViewSet(viewsets.ViewSet):
    """Your personal access tokens for the REST API (``Authorization: Bearer ivp_...``). A token
    acts as you; it is shown once, at creation."""

    queryset = PersonalAccessToken.objects.none()  # for the schema only
    pagination_class = default_pagination_class()  # for the schema: lists are paginated

    def _get(self, request: Request, pk: Any) -> PersonalAccessToken:
        token_id = path_id(pk, message="No such access token.")
        token = PersonalAccessToken.objects.filter(user=request_user(request), id=token_id).first()
        if token is None:
            raise NotFound("No such access token.")
        return token

    @extend_schema(responses=AccessTokenOutSerializer(many=True))
    def list(self, request: Request) -> Response:
        queryset = PersonalAccessToken.objects.filter(user=request_user(request)).order_by("-id")
        return paginated_response(request, self, queryset, AccessTokenOutSerializer)

    @extend_schema(
        request=AccessTokenInSerializer, responses={201: AccessTokenCreatedOutSerializer}
    )
    def create(self, request: Request) -> Response:
        data = AccessTokenInSerializer(data=request.data)
        data.is_valid(raise_exception=True)
        # A token made by single sign-on (or by a token that was) may reach organizations that
        # require it; one made with a password may not (apps/accounts/selectors.sso_check).
        token, plaintext = access_token_create(
            user=request_user(request),
            sso=request_sso(request) is True,
            **data.validated_data,
        )
        body = AccessTokenOutSerializer(token).data | {"token": plaintext}
        return Response(body, status=status.HTTP_201_CREATED)

    @extend_schema(request=None, responses=AccessTokenOutSerializer)
    @action(detail=True, methods=["post"])
    def revoke(self, request: Request, pk: Any = None) -> Response:
        token = access_token_revoke(token=self._get(request, pk))
        return Response(AccessTokenOutSerializer(token).data)

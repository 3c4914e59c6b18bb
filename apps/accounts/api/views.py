from drf_spectacular.utils import extend_schema
from rest_framework.request import Request
from rest_framework.response import Response
from rest_framework.views import APIView

from apps.accounts.api.serializers import MeOutSerializer
from apps.accounts.auth import request_user
from apps.accounts.models import Membership


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

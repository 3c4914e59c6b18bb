from __future__ import annotations

import time
import uuid

from drf_spectacular.utils import OpenApiParameter, extend_schema, inline_serializer
from rest_framework import serializers
from rest_framework.permissions import IsAdminUser
from rest_framework.request import Request
from rest_framework.response import Response
from rest_framework.views import APIView

from apps.accounts.auth import request_user
from apps.accounts.selectors import organization_get_for_user
from apps.instances.tasks import ping_task
from inventiv.params import query_text
from inventiv.schema import errors


class PingView(APIView):
    """Staff self-check of the whole message path: this sends a command to the worker, which
    publishes ``EVENT:PONG`` to the organization's and staff's WebSocket groups."""

    permission_classes = [IsAdminUser]

    @extend_schema(
        request=None,
        parameters=[
            OpenApiParameter("organization", str, description="Default: your personal one.")
        ],
        responses={
            202: inline_serializer("PingOut", {"ping_id": serializers.CharField()}),
            **errors(400, 404, s404="`not_found`: no such organization (`param`: organization)."),
        },
    )
    def post(self, request: Request) -> Response:
        org = organization_get_for_user(
            user=request_user(request), slug=query_text(request.query_params, "organization")
        )
        ping_id = uuid.uuid4().hex
        ping_task.delay(ping_id=ping_id, organization_id=org.id, sent_at=time.time())
        return Response({"ping_id": ping_id}, status=202)

"""The internal host API for on-premise host agents: join with a one-time token, then poll
with the host credential. JSON in the OpenAI error envelope, like the agent API."""

from __future__ import annotations

from django.http import HttpRequest, JsonResponse
from django.views.decorators.csrf import csrf_exempt
from django.views.decorators.http import require_POST

from agent.host_protocol import HOST_PROTOCOL_VERSION, HostJoinRequest, HostPoll
from apps.instances.agents.api.wire import (
    bearer_token,
    error_response,
    json_response,
    parse_message,
)
from apps.instances.agents.hosts import (
    HostAuthError,
    onprem_host_authenticate,
    onprem_host_join,
    onprem_host_poll,
)
from inventiv.errors import ApplicationError


@csrf_exempt
@require_POST
def join(request: HttpRequest) -> JsonResponse:
    try:
        response = onprem_host_join(
            request=parse_message(request, HostJoinRequest, version=HOST_PROTOCOL_VERSION)
        )
    except ApplicationError as exc:
        return error_response(exc)
    return json_response(response)


@csrf_exempt
@require_POST
def poll(request: HttpRequest) -> JsonResponse:
    try:
        credential = bearer_token(request, HostAuthError("Invalid host credential."))
        host = onprem_host_authenticate(credential=credential)
        poll = parse_message(request, HostPoll, version=HOST_PROTOCOL_VERSION)
        response = onprem_host_poll(host=host, poll=poll)
    except ApplicationError as exc:
        return error_response(exc)
    return json_response(response)

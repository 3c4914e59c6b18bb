"""The internal agent API: token-authenticated, separate from the public API (no session, no
user credentials accepted), JSON in the OpenAI error envelope."""

from __future__ import annotations

from django.http import HttpRequest, HttpResponse, JsonResponse
from django.views.decorators.csrf import csrf_exempt
from django.views.decorators.http import require_GET, require_POST

from agent.protocol import PROTOCOL_VERSION, RegisterRequest
from apps.instances.agents import package as agent_package
from apps.instances.agents.api.beat import heartbeat_answer
from apps.instances.agents.api.wire import error_response, json_response, parse_message
from apps.instances.agents.services import agent_register
from inventiv.errors import ApplicationError, NotFound


@require_GET
def agent_wheel(request: HttpRequest, filename: str) -> HttpResponse:
    """The agent wheel machines install (public code, no secret inside)."""
    if filename != agent_package.wheel_name():
        return error_response(NotFound(f"No such file; the agent is {agent_package.wheel_name()}."))
    response = HttpResponse(agent_package.build_wheel(), content_type="application/zip")
    response["Content-Disposition"] = f'attachment; filename="{filename}"'
    return response


@csrf_exempt
@require_POST
def register(request: HttpRequest) -> JsonResponse:
    try:
        message = parse_message(request, RegisterRequest, version=PROTOCOL_VERSION)
        return json_response(agent_register(request=message))
    except ApplicationError as exc:
        return error_response(exc)


@csrf_exempt
@require_POST
def heartbeat(request: HttpRequest) -> HttpResponse:
    """Also served without Django's middleware by ``asgi.HeartbeatApp`` (same answers)."""
    status, body = heartbeat_answer(
        authorization=request.headers.get("Authorization", ""), body=request.body
    )
    return HttpResponse(body, status=status, content_type="application/json")

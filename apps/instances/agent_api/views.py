"""The internal agent API: token-authenticated, separate from the public API (no session, no
user credentials accepted), JSON in the OpenAI error envelope."""

from __future__ import annotations

from typing import Any, TypeVar

from django.http import HttpRequest, HttpResponse, JsonResponse
from django.views.decorators.csrf import csrf_exempt
from django.views.decorators.http import require_GET, require_POST
from pydantic import BaseModel, ValidationError

from agent.protocol import PROTOCOL_VERSION, Heartbeat, RegisterRequest
from apps.instances import agent_package
from apps.instances.agent_services import (
    AgentAuthError,
    agent_authenticate,
    agent_heartbeat,
    agent_register,
)
from inventiv.errors import ApplicationError, NotFound, error_body

M = TypeVar("M", bound=BaseModel)


def _error(exc: ApplicationError) -> JsonResponse:
    return JsonResponse(
        error_body(exc.message, type=exc.type, code=exc.code, param=exc.param),
        status=exc.status_code,
    )


def _parse(request: HttpRequest, model: type[M]) -> M:
    try:
        message = model.model_validate_json(request.body)
    except ValidationError as exc:
        first = exc.errors()[0]
        param = ".".join(str(p) for p in first["loc"]) or None
        raise ApplicationError(f"{param}: {first['msg']}", param=param) from None
    version = getattr(message, "protocol_version", PROTOCOL_VERSION)
    if version != PROTOCOL_VERSION:
        raise ApplicationError(
            f"Unsupported protocol version {version}; this control plane speaks "
            f"{PROTOCOL_VERSION}.",
            param="protocol_version",
            code="unsupported_protocol",
        )
    return message


def _bearer(request: HttpRequest) -> str:
    header = request.headers.get("Authorization", "")
    scheme, _, token = header.partition(" ")
    if scheme.lower() != "bearer" or not token:
        raise AgentAuthError("Invalid agent credential.")
    return token.strip()


def _json(model: BaseModel) -> JsonResponse:
    data: Any = model.model_dump(mode="json")
    return JsonResponse(data)


@require_GET
def agent_wheel(request: HttpRequest, filename: str) -> HttpResponse:
    """The agent wheel machines install (public code, no secret inside)."""
    if filename != agent_package.wheel_name():
        return _error(NotFound(f"No such file; the agent is {agent_package.wheel_name()}."))
    response = HttpResponse(agent_package.build_wheel(), content_type="application/zip")
    response["Content-Disposition"] = f'attachment; filename="{filename}"'
    return response


@csrf_exempt
@require_POST
def register(request: HttpRequest) -> JsonResponse:
    try:
        return _json(agent_register(request=_parse(request, RegisterRequest)))
    except ApplicationError as exc:
        return _error(exc)


@csrf_exempt
@require_POST
def heartbeat(request: HttpRequest) -> JsonResponse:
    try:
        instance = agent_authenticate(credential=_bearer(request))
        return _json(agent_heartbeat(instance=instance, heartbeat=_parse(request, Heartbeat)))
    except ApplicationError as exc:
        return _error(exc)

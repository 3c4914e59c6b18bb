"""The internal host API for on-premise host agents: join with a one-time token, then poll
with the host credential. JSON in the OpenAI error envelope, like the agent API."""

from __future__ import annotations

from typing import TypeVar

from django.http import HttpRequest, JsonResponse
from django.views.decorators.csrf import csrf_exempt
from django.views.decorators.http import require_POST
from pydantic import BaseModel, ValidationError

from agent.host_protocol import HOST_PROTOCOL_VERSION, HostJoinRequest, HostPoll
from apps.instances.onprem_services import (
    HostAuthError,
    onprem_host_authenticate,
    onprem_host_join,
    onprem_host_poll,
)
from inventiv.errors import ApplicationError, error_body

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
    version = getattr(message, "protocol_version", HOST_PROTOCOL_VERSION)
    if version != HOST_PROTOCOL_VERSION:
        raise ApplicationError(
            f"Unsupported host protocol version {version}.",
            param="protocol_version",
            code="unsupported_protocol",
        )
    return message


@csrf_exempt
@require_POST
def join(request: HttpRequest) -> JsonResponse:
    try:
        response = onprem_host_join(request=_parse(request, HostJoinRequest))
    except ApplicationError as exc:
        return _error(exc)
    return JsonResponse(response.model_dump(mode="json"))


@csrf_exempt
@require_POST
def poll(request: HttpRequest) -> JsonResponse:
    try:
        scheme, _, credential = request.headers.get("Authorization", "").partition(" ")
        if scheme.lower() != "bearer" or not credential.strip():
            raise HostAuthError("Invalid host credential.")
        host = onprem_host_authenticate(credential=credential.strip())
        response = onprem_host_poll(host=host, poll=_parse(request, HostPoll))
    except ApplicationError as exc:
        return _error(exc)
    return JsonResponse(response.model_dump(mode="json"))

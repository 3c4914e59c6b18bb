"""JSON in and out of the internal agent API (instance agents and on-premise host agents):
pydantic messages from ``agent/``, errors in the OpenAI envelope."""

from __future__ import annotations

from typing import Any, TypeVar

from django.http import HttpRequest, JsonResponse
from pydantic import BaseModel, ValidationError

from inventiv.errors import ApplicationError

M = TypeVar("M", bound=BaseModel)


def error_response(exc: ApplicationError) -> JsonResponse:
    return JsonResponse(exc.body(), status=exc.status_code)


def parse_message(request: HttpRequest, model: type[M], *, version: int) -> M:
    """The request body as ``model``; 400 ``invalid_json`` for a body that is not a JSON
    object, ``invalid_value`` naming the first bad field, or ``unsupported_protocol``."""
    try:
        message = model.model_validate_json(request.body)
    except ValidationError as exc:
        first = exc.errors()[0]
        param = ".".join(str(p) for p in first["loc"]) or None
        if param is None:
            raise ApplicationError(
                f"The body is not a JSON object: {first['msg']}", code="invalid_json"
            ) from None
        raise ApplicationError(f"{param}: {first['msg']}", param=param) from None
    got = getattr(message, "protocol_version", version)
    if got != version:
        raise ApplicationError(
            f"Unsupported protocol version {got}; this control plane speaks {version}.",
            param="protocol_version",
            code="unsupported_protocol",
        )
    return message


def bearer_token(request: HttpRequest, error: ApplicationError) -> str:
    """The ``Authorization: Bearer`` token, or ``error`` raised."""
    scheme, _, token = request.headers.get("Authorization", "").partition(" ")
    if scheme.lower() != "bearer" or not token.strip():
        raise error
    return token.strip()


def json_response(message: BaseModel) -> JsonResponse:
    data: Any = message.model_dump(mode="json")
    return JsonResponse(data)

"""JSON in and out of the internal agent API (instance agents and on-premise host agents):
pydantic messages from ``agent/``, errors in the OpenAI envelope."""

from __future__ import annotations

import json
from typing import Any, TypeVar

from django.http import HttpRequest, JsonResponse
from pydantic import BaseModel, ValidationError

from agent import __version__
from inventiv.errors import ApplicationError

M = TypeVar("M", bound=BaseModel)


class UnsupportedProtocol(ApplicationError):
    """An agent (or host agent) speaking a protocol version this control plane cannot."""

    code = "unsupported_protocol"

    def __init__(self, *, got: object, speaks: int) -> None:
        super().__init__(
            f"Unsupported protocol version {got!r}; this control plane speaks version {speaks}. "
            f"Install the agent it serves (inventiv-agent {__version__}) or upgrade the "
            "control plane.",
            param="protocol_version",
        )


def error_response(exc: ApplicationError) -> JsonResponse:
    return JsonResponse(exc.body(), status=exc.status_code)


def parse_message(request: HttpRequest, model: type[M], *, version: int) -> M:
    """The request body as ``model`` (see :func:`parse_body`)."""
    return parse_body(request.body, model, version=version)


def parse_body(body: bytes, model: type[M], *, version: int) -> M:
    """``body`` as ``model``; 400 ``invalid_json`` for a body that is not a JSON
    object, ``unsupported_protocol`` for a ``protocol_version`` other than ``version``
    (checked before the shape, since another protocol's message may not have our fields), or
    ``invalid_value`` naming the first bad field. A body without ``protocol_version`` is read
    as ``version``."""
    try:
        raw = json.loads(body)
    except (ValueError, UnicodeDecodeError) as exc:
        raise ApplicationError(f"The body is not JSON: {exc}", code="invalid_json") from None
    if not isinstance(raw, dict):
        raise ApplicationError("The body is not a JSON object.", code="invalid_json")
    got = raw.get("protocol_version", version)
    if got != version or isinstance(got, bool):
        raise UnsupportedProtocol(got=got, speaks=version)
    try:
        return model.model_validate(raw)
    except ValidationError as exc:
        first = exc.errors()[0]
        param = ".".join(str(p) for p in first["loc"]) or None
        raise ApplicationError(f"{param}: {first['msg']}", param=param) from None


def bearer_token(request: HttpRequest, error: ApplicationError) -> str:
    """The ``Authorization: Bearer`` token, or ``error`` raised."""
    return bearer_from_header(request.headers.get("Authorization", ""), error)


def bearer_from_header(header: str, error: ApplicationError) -> str:
    """The token of an ``Authorization: Bearer`` header value, or ``error`` raised."""
    scheme, _, token = header.partition(" ")
    if scheme.lower() != "bearer" or not token.strip():
        raise error
    return token.strip()


def json_response(message: BaseModel) -> JsonResponse:
    data: Any = message.model_dump(mode="json")
    return JsonResponse(data)

"""One error hierarchy and one JSON envelope for the REST API and the gateway alike.

The envelope is OpenAI's: ``{"error": {"message": str, "type": str, "param": str|None,
"code": str|None}}``. Codes are stable strings clients can switch on.
"""

from __future__ import annotations

from typing import Any

from django.core.exceptions import PermissionDenied
from django.http import Http404
from rest_framework import exceptions, status
from rest_framework.response import Response
from rest_framework.views import exception_handler


class ApplicationError(Exception):
    """A failure the client can act on. Services raise it; views map it to the envelope."""

    status_code = 400
    type = "invalid_request_error"
    code = "invalid_request"

    def __init__(self, message: str, *, param: str | None = None, code: str | None = None):
        super().__init__(message)
        self.message = message
        self.param = param
        if code is not None:
            self.code = code


class NotFound(ApplicationError):
    status_code = 404
    code = "not_found"


class Conflict(ApplicationError):
    status_code = 409
    code = "conflict"


class Forbidden(ApplicationError):
    status_code = 403
    type = "permission_error"
    code = "forbidden"


def error_body(
    message: str, *, type: str, code: str | None = None, param: str | None = None
) -> dict[str, Any]:
    return {"error": {"message": message, "type": type, "param": param, "code": code}}


def _first_validation_error(detail: Any, prefix: str = "") -> tuple[str | None, str]:
    """Flatten DRF's nested validation detail to the first (field, message)."""
    if isinstance(detail, dict):
        for key, value in detail.items():
            field = key if key != "non_field_errors" else ""
            name = f"{prefix}.{field}" if prefix and field else (field or prefix)
            return _first_validation_error(value, name)
    if isinstance(detail, list) and detail:
        return _first_validation_error(detail[0], prefix)
    return (prefix or None), str(detail)


def api_exception_handler(exc: Exception, context: dict[str, Any]) -> Response | None:
    if isinstance(exc, ApplicationError):
        return Response(
            error_body(exc.message, type=exc.type, code=exc.code, param=exc.param),
            status=exc.status_code,
        )
    if isinstance(exc, Http404):
        exc = exceptions.NotFound()
    elif isinstance(exc, PermissionDenied):
        exc = exceptions.PermissionDenied()
    response = exception_handler(exc, context)
    if response is None:
        return None
    if isinstance(exc, exceptions.ValidationError):
        param, message = _first_validation_error(exc.detail)
        text = f"{param}: {message}" if param else message
        response.data = error_body(text, type="invalid_request_error", code="invalid", param=param)
        return response
    kinds = {
        status.HTTP_401_UNAUTHORIZED: "authentication_error",
        status.HTTP_403_FORBIDDEN: "permission_error",
        status.HTTP_404_NOT_FOUND: "not_found_error",
        status.HTTP_429_TOO_MANY_REQUESTS: "rate_limit_error",
    }
    detail = getattr(exc, "detail", str(exc))
    code = getattr(detail, "code", None)
    response.data = error_body(
        str(detail),
        type=kinds.get(response.status_code, "invalid_request_error"),
        code=str(code) if code else None,
    )
    return response

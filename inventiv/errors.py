"""One error hierarchy, and the REST API's mapping of it (and of DRF's and Django's own
refusals) to OpenAI's envelope ``{"error": {"message", "type", "param", "code"}}``.

Codes, their status and type live in :mod:`inventiv.error_codes`; the envelope is rendered by
``inventiv.error_codes.envelope`` here, in the agent API and in the gateway alike.
"""

from __future__ import annotations

from typing import Any

from django.core.exceptions import PermissionDenied
from django.http import Http404, HttpRequest, HttpResponse, JsonResponse
from django.views import defaults
from rest_framework import exceptions
from rest_framework.response import Response
from rest_framework.views import exception_handler

from inventiv.error_codes import CODES, ErrorCode, envelope


class ApplicationError(Exception):
    """A failure the client can act on. Services raise it; views map it to the envelope.

    ``code`` (the class default, or the argument) must be registered in
    :data:`inventiv.error_codes.CODES`; it fixes ``status_code`` and ``type``. An unregistered
    code raises ``KeyError`` at construction (or at class definition for a subclass)."""

    code = "invalid_value"

    def __init_subclass__(cls, **kwargs: Any) -> None:
        super().__init_subclass__(**kwargs)
        CODES[cls.code]

    def __init__(self, message: str, *, param: str | None = None, code: str | None = None):
        super().__init__(message)
        self.message = message
        self.param = param
        if code is not None:
            self.code = code
        self.spec: ErrorCode = CODES[self.code]

    @property
    def status_code(self) -> int:
        return self.spec.status

    @property
    def type(self) -> str:
        return self.spec.type

    def body(self) -> dict[str, Any]:
        return envelope(self.message, self.code, self.param)


class NotFound(ApplicationError):
    code = "not_found"


class Conflict(ApplicationError):
    code = "conflict"


class Forbidden(ApplicationError):
    code = "permission_denied"


# DRF's own exceptions, by their ``default_code``, to ours (same status, see the tests).
DRF_CODES = {
    "invalid": "invalid_value",
    "parse_error": "invalid_json",
    "authentication_failed": "not_authenticated",
    "not_authenticated": "not_authenticated",
    "permission_denied": "permission_denied",
    "not_found": "not_found",
    "method_not_allowed": "method_not_allowed",
    "not_acceptable": "not_acceptable",
    "unsupported_media_type": "unsupported_media_type",
    "throttled": "rate_limit_exceeded",
    "login_locked_out": "login_locked_out",
}


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
        return Response(exc.body(), status=exc.status_code)
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
        response.data = envelope(text, "invalid_value", param)
        return response
    default = "server_error" if response.status_code >= 500 else "invalid_request"
    code = DRF_CODES.get(str(getattr(exc, "default_code", "")), default)
    response.data = envelope(str(getattr(exc, "detail", exc)), code)
    return response


# --- Django's own error views (``handler400``... in ``inventiv/urls.py``) -------------------
# DRF's handler above covers what its views raise. What happens outside them (no URL matches,
# a converter refuses the path, an unexpected exception escapes a view, a suspicious request)
# reaches Django's error views: under these prefixes they answer in the envelope, never HTML.
ENVELOPE_PREFIXES = ("/api/", "/internal/")


def _wants_envelope(request: HttpRequest) -> bool:
    return request.path.startswith(ENVELOPE_PREFIXES)


def _envelope_response(message: str, code: str) -> JsonResponse:
    return JsonResponse(envelope(message, code), status=CODES[code].status)


def handler400(request: HttpRequest, exception: Exception) -> HttpResponse:
    if _wants_envelope(request):
        return _envelope_response("Bad request.", "invalid_request")
    return defaults.bad_request(request, exception)


def handler403(request: HttpRequest, exception: Exception) -> HttpResponse:
    if _wants_envelope(request):
        return _envelope_response("You may not do this.", "permission_denied")
    return defaults.permission_denied(request, exception)


def handler404(request: HttpRequest, exception: Exception | None = None) -> HttpResponse:
    if _wants_envelope(request):
        return _envelope_response("No such object or path.", "not_found")
    return defaults.page_not_found(request, exception)


def handler500(request: HttpRequest) -> HttpResponse:
    if _wants_envelope(request):
        return _envelope_response("Internal server error; retry later.", "server_error")
    return defaults.server_error(request)

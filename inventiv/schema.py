"""The OpenAPI schema at /api/schema/ says what the API really answers.

drf-spectacular documents each operation's success; :class:`AutoSchema` adds the refusals
every operation of a kind can answer, in the error envelope (the ``ErrorEnvelope`` component):

* 401 ``not_authenticated`` — every operation that needs a signed-in caller;
* 403 ``permission_denied`` — staff-only views, and every write (the role check, and DRF's
  CSRF check of session-authenticated writes);
* 404 ``not_found`` — every operation with an id in its path;
* 400 ``invalid_json``/``invalid_value`` and 415 ``unsupported_media_type`` — every operation
  that reads a body; 400 ``invalid_value`` also for documented query filters that are validated;
* 406 ``not_acceptable`` — every operation (content negotiation).

Statuses specific to one operation (a 409 conflict, a 404 for an unknown organization slug in
a body) are declared where the view is, with :func:`errors`. A schemathesis run in the suite
(tests/foundation/test_schema_conformance.py) checks that the API and this schema agree.
"""

from __future__ import annotations

from typing import Any

from drf_spectacular import openapi
from drf_spectacular.utils import OpenApiResponse
from rest_framework import serializers
from rest_framework.permissions import AllowAny, IsAdminUser

from inventiv.error_codes import CODES


class ErrorBodySerializer(serializers.Serializer[Any]):
    message = serializers.CharField(help_text="For people; may change.")
    type = serializers.CharField(help_text="Follows from the status, as in OpenAI's API.")
    param = serializers.CharField(allow_null=True, help_text="The field at fault, if one is.")
    code = serializers.ChoiceField(
        choices=sorted(CODES), help_text="The stable code to switch on (docs/errors.md)."
    )


class ErrorEnvelopeSerializer(serializers.Serializer[Any]):
    """OpenAI's error envelope, on every surface (docs/errors.md)."""

    error = ErrorBodySerializer()


_DESCRIPTIONS = {
    400: "Malformed request: `invalid_json` (body) or `invalid_value` (`param` names the field).",
    401: "`not_authenticated`: no valid session or access token.",
    403: "`permission_denied`: this role may not do this (or a session write lacks CSRF).",
    404: "`not_found`: no such object, or one you may not see (the same answer).",
    406: "`not_acceptable`: no response format matches the Accept header.",
    409: "A conflict with the object's current status (`conflict`, or a more specific code).",
    415: "`unsupported_media_type`: the body is not JSON (or a form).",
}


def error_response(status: int, description: str | None = None) -> OpenApiResponse:
    return OpenApiResponse(
        response=ErrorEnvelopeSerializer, description=description or _DESCRIPTIONS[status]
    )


def errors(*statuses: int, **descriptions: str) -> dict[int, OpenApiResponse]:
    """Error responses to merge into ``extend_schema(responses={...})``: ``errors(404, 409)``;
    a description for one of them by ``s<status>="..."``."""
    return {s: error_response(s, descriptions.get(f"s{s}")) for s in statuses}


class AutoSchema(openapi.AutoSchema):
    """drf-spectacular's AutoSchema, plus the error responses listed in the module docstring."""

    WRITE_METHODS = ("POST", "PUT", "PATCH", "DELETE")

    def _error_statuses(self, operation: dict[str, Any]) -> set[int]:
        permissions = [type(p) for p in self.view.get_permissions()]
        statuses = {406}
        if not all(issubclass(p, AllowAny) for p in permissions):
            statuses.add(401)
        if any(issubclass(p, IsAdminUser) for p in permissions) or (
            self.method in self.WRITE_METHODS
        ):
            statuses.add(403)
        if "{" in self.path:
            statuses.add(404)
        if "requestBody" in operation:
            statuses.update({400, 415})
        return statuses

    def get_operation(self, *args: Any, **kwargs: Any) -> Any:
        operation = super().get_operation(*args, **kwargs)
        if operation is None:  # excluded from the schema
            return operation
        responses = operation["responses"]
        for status in sorted(self._error_statuses(operation)):
            responses.setdefault(
                str(status), self._get_response_for_code(error_response(status), str(status))
            )
        operation["responses"] = dict(sorted(responses.items()))
        return operation

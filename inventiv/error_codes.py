"""Every error code any surface (REST API, internal agent API, gateway) answers with, and the one
renderer of OpenAI's envelope ``{"error": {"message", "type", "param", "code"}}``.

Plain Python on purpose: the gateway's hot path imports it without Django's request machinery.
A code is a stable string clients switch on; it fixes the HTTP status and the OpenAI ``type``
(derived from the status, as OpenAI does). ``docs/errors.md`` lists exactly this table (a test
keeps it true). Looking up an unregistered code raises ``KeyError``: an error cannot be built
with a code nobody documented.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal

Surface = Literal["rest", "agent", "gateway"]
ErrorEnvelope = dict[str, dict[str, str | None]]


def type_for(status: int) -> str:
    """OpenAI's ``type`` for a status: one rule on every surface. OpenAI answers a 404 (an
    unknown model or URL) with ``invalid_request_error``; so do we."""
    if status == 401:
        return "authentication_error"
    if status == 403:
        return "permission_error"
    if status == 429:
        return "rate_limit_error"
    if status >= 500:
        return "server_error"
    return "invalid_request_error"


@dataclass(frozen=True, slots=True)
class ErrorCode:
    code: str
    status: int
    meaning: str
    surfaces: tuple[Surface, ...]
    type: str = field(init=False)

    def __post_init__(self) -> None:
        object.__setattr__(self, "type", type_for(self.status))


_ALL: tuple[Surface, ...] = ("rest", "agent", "gateway")

CODES: dict[str, ErrorCode] = {
    c.code: c
    for c in (
        # --- the request itself ----------------------------------------------------------
        ErrorCode(
            "invalid_value",
            400,
            "A field is missing or has a wrong value; `param` names it (dotted for nested).",
            _ALL,
        ),
        ErrorCode("invalid_json", 400, "The body is not JSON, or not a JSON object.", _ALL),
        ErrorCode(
            "endpoint_not_supported",
            400,
            "The model code's engine does not serve this endpoint (rerank, score, tokenize: see "
            "docs/gateway.md).",
            ("gateway",),
        ),
        ErrorCode(
            "previous_response_not_supported",
            400,
            "`/v1/responses` is stateless: `previous_response_id` is refused; send the "
            "conversation in `input`.",
            ("gateway",),
        ),
        ErrorCode(
            "invalid_request",
            400,
            "The request is malformed outside its fields (a bad `Content-Length`), or a 4xx "
            "no more specific code names.",
            ("rest", "gateway"),
        ),
        ErrorCode(
            "unsupported_protocol",
            400,
            "The agent speaks another `protocol_version` than this control plane.",
            ("agent",),
        ),
        ErrorCode(
            "method_not_allowed",
            405,
            "The path exists, not with this method.",
            ("rest", "gateway"),
        ),
        ErrorCode(
            "not_acceptable", 406, "No response format matches the `Accept` header.", ("rest",)
        ),
        ErrorCode(
            "request_timeout",
            408,
            "The request's head (`--timeout-keep-alive`) or body (`GATEWAY_BODY_TIMEOUT_S`) "
            "did not arrive in time; the connection is closed.",
            ("rest", "gateway"),
        ),
        ErrorCode(
            "request_too_large",
            413,
            "The body is over the size limit (`GATEWAY_MAX_BODY_BYTES`; a heartbeat: 256 KiB).",
            ("agent", "gateway"),
        ),
        ErrorCode(
            "unsupported_media_type",
            415,
            "The body's `Content-Type` is not JSON (or a form).",
            ("rest",),
        ),
        ErrorCode(
            "request_header_fields_too_large",
            431,
            "The request line and headers are over the size limit "
            "(`--h11-max-incomplete-event-size`); the connection is closed.",
            ("rest", "gateway"),
        ),
        ErrorCode(
            "client_disconnected",
            499,
            "The client went away before the answer (recorded in usage, never sent).",
            ("gateway",),
        ),
        # --- who is asking ---------------------------------------------------------------
        ErrorCode(
            "not_authenticated",
            401,
            "No valid session or access token (missing, unknown, revoked or expired).",
            ("rest",),
        ),
        ErrorCode(
            "invalid_agent_credentials",
            401,
            "Bad, expired or used bootstrap or join token; unknown or revoked agent or host "
            "credential (one body for all).",
            ("agent",),
        ),
        ErrorCode(
            "invalid_api_key",
            401,
            "Missing, unknown, wrong, revoked or expired API key (one body for all).",
            ("gateway",),
        ),
        ErrorCode(
            "permission_denied",
            403,
            "Authenticated, but this role may not do this (the message names the capability).",
            ("rest",),
        ),
        ErrorCode(
            "sso_required",
            403,
            "The organization requires single sign-on; this session signed in with a password.",
            ("rest",),
        ),
        ErrorCode(
            "signup_closed",
            403,
            "Sign-up is closed on this platform, or needs a valid invitation (`INVENTIV_SIGNUP`).",
            ("rest",),
        ),
        ErrorCode(
            "login_locked_out",
            429,
            "Too many failed logins for this account from this address: refused for the "
            "cool-off (`INVENTIV_LOGIN_COOLOFF_S`), the right password included; see "
            "`Retry-After`.",
            ("rest",),
        ),
        ErrorCode(
            "model_not_allowed",
            403,
            "The API key's allow-list excludes this model code; `param` is `model`.",
            ("gateway",),
        ),
        # --- what is asked for -----------------------------------------------------------
        ErrorCode(
            "not_found",
            404,
            "No such object or path, or one the caller may not see (the same answer).",
            _ALL,
        ),
        ErrorCode(
            "model_not_found",
            404,
            "No model code by this name in the key's organization; `param` is `model`.",
            ("gateway",),
        ),
        ErrorCode(
            "conflict",
            409,
            "The object's current status forbids this (or a unique name is taken); re-read it.",
            ("rest",),
        ),
        ErrorCode("deployed", 409, "A deployed model code cannot change this field.", ("rest",)),
        ErrorCode("not_deployed", 409, "Deploy the model code before scaling it.", ("rest",)),
        ErrorCode(
            "still_deployed",
            409,
            "Decommission the model code before deleting it.",
            ("rest",),
        ),
        ErrorCode(
            "has_history",
            409,
            "The model code has instance history: it stays decommissioned, never deleted.",
            ("rest",),
        ),
        ErrorCode("key_revoked", 400, "The API key is revoked; it cannot rotate.", ("rest",)),
        ErrorCode(
            "provider_not_enabled",
            400,
            "The provider is not enabled on this control plane (e.g. `local` in production).",
            ("rest",),
        ),
        ErrorCode("no_provider", 400, "No enabled provider can host this model code.", ("rest",)),
        ErrorCode("no_local_port", 400, "No free local port for one more engine.", ("rest",)),
        # --- limits and the engines behind the gateway -----------------------------------
        ErrorCode(
            "rate_limit_exceeded",
            429,
            "A limit (requests or tokens per minute, concurrency) is reached; see `Retry-After`.",
            ("gateway",),
        ),
        ErrorCode(
            "hold_queue_full",
            429,
            "Too many requests already wait for this model code to wake from zero "
            "(`GATEWAY_HOLD_QUEUE_MAX`); see `Retry-After`.",
            ("gateway",),
        ),
        ErrorCode(
            "insufficient_quota",
            429,
            "The API key's or organization's monthly budget is spent (or would be by this "
            "request's worst case), or billing blocked it; raise the budget or wait for the month.",
            ("gateway",),
        ),
        ErrorCode(
            "server_error",
            500,
            "An unexpected failure on our side; retry later, with backoff.",
            ("rest", "gateway"),
        ),
        ErrorCode(
            "upstream_error",
            502,
            "The engine answered 5xx or dropped the connection, after the allowed attempts.",
            ("gateway",),
        ),
        ErrorCode(
            "upstream_unreachable",
            502,
            "No engine could be connected to, after the allowed attempts.",
            ("gateway",),
        ),
        ErrorCode(
            "upstream_stream_broken",
            502,
            "The engine's stream broke after bytes were sent (a final SSE error event).",
            ("gateway",),
        ),
        ErrorCode(
            "gateway_interrupted",
            502,
            "The gateway process died mid-answer; billed from its last checkpoint (recorded in "
            "usage, never sent).",
            ("gateway",),
        ),
        ErrorCode(
            "database_unavailable",
            503,
            "The database could not be reached for a heartbeat (its connections failed to "
            "open); the agent retries at its next beat.",
            ("agent",),
        ),
        ErrorCode(
            "gateway_shutting_down",
            503,
            "The gateway was stopping and cut the stream after its graceful timeout (a final SSE "
            "error event); retry.",
            ("gateway",),
        ),
        ErrorCode(
            "usage_unavailable",
            503,
            "Usage could not be recorded in time (`USAGE_WRITE_TIMEOUT_S`): the answer was not "
            "sent, or the stream was cut; retry.",
            ("gateway",),
        ),
        ErrorCode(
            "server_busy",
            503,
            "The server is at its connection limit (`--limit-concurrency`); retry later.",
            ("rest", "gateway"),
        ),
        ErrorCode(
            "model_unavailable",
            503,
            "The model code has no ready instance right now; see `Retry-After`.",
            ("gateway",),
        ),
        ErrorCode(
            "upstream_timeout",
            504,
            "The engine sent no answer, or no next chunk, in time (`GATEWAY_UPSTREAM_TIMEOUT_S`).",
            ("gateway",),
        ),
    )
}


def envelope(message: str, code: str, param: str | None = None) -> ErrorEnvelope:
    """The one error body. ``code`` must be registered (``KeyError`` otherwise); the ``type``
    comes from it."""
    return {"error": {"message": message, "type": CODES[code].type, "param": param, "code": code}}


def markdown_table() -> str:
    """The table ``docs/errors.md`` holds, rendered from the registry."""
    rows = ["| code | status | type | surfaces | meaning |", "|---|---|---|---|---|"]
    for c in sorted(CODES.values(), key=lambda c: (c.status, c.code)):
        surfaces = ", ".join(c.surfaces)
        rows.append(f"| `{c.code}` | {c.status} | `{c.type}` | {surfaces} | {c.meaning} |")
    return "\n".join(rows) + "\n"

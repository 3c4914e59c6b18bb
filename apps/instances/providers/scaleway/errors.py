"""Scaleway's error bodies (``{"type": ..., "message": ..., "details": ...}``) mapped to our
typed ``ProviderError``s; which of them are transient is decided here and only here."""

from __future__ import annotations

from scaleway_core.api import ScalewayException

from apps.instances.providers.base import (
    AuthenticationFailed,
    MachineNotFound,
    OutOfCapacity,
    ProviderError,
    QuotaExceeded,
    TransientProviderError,
)

# Error ``type``s, by the error they become (HTTP statuses complete them in ``error_from``).
AUTH_KINDS = {"denied_authentication", "permissions_denied"}
TRANSIENT_KINDS = {"transient_state", "locked"}
# HTTP statuses that say "try again": conflict, locked, throttled (and every 5xx).
TRANSIENT_STATUSES = {409, 423, 429}


def error_from(exc: ScalewayException) -> ProviderError:
    """Map a Scaleway error body (``{"type": ..., "message": ...}``) to our typed errors."""
    status = exc.response.status_code
    try:
        body = exc.response.json()
    except ValueError:
        body = {}
    kind = str(body.get("type") or "")
    message = str(body.get("message") or exc.response.reason or "error")
    detail = f"Scaleway {status} {kind}: {message}".strip()
    if kind == "quotas_exceeded":
        resources = ", ".join(
            f"{d.get('resource')} ({d.get('current')}/{d.get('quota')})"
            for d in body.get("details") or []
            if isinstance(d, dict)
        )
        return QuotaExceeded(detail + (f" [{resources}]" if resources else ""))
    if kind == "out_of_stock" or (kind == "precondition_failed" and "stock" in message.lower()):
        return OutOfCapacity(detail)
    if status in (401, 403) or kind in AUTH_KINDS:
        return AuthenticationFailed(detail)
    if status == 404 or kind == "not_found":
        return MachineNotFound(detail)
    if status in TRANSIENT_STATUSES or status >= 500 or kind in TRANSIENT_KINDS:
        return TransientProviderError(detail)
    return ProviderError(detail)

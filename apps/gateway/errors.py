"""The gateway's refusals, in OpenAI's error envelope.

Guarantees: every refusal is a ``GatewayError`` whose ``body()`` is
``{"error": {"message", "type", "param", "code"}}`` with a stable ``code``; the dispatcher in
``apps.gateway.app`` turns it into the response (status, envelope, extra headers such as
``Retry-After``). A missing, unknown, wrong, revoked or expired key always gets the same body.
"""

from __future__ import annotations

import math

import orjson


class GatewayError(Exception):
    """A refusal in OpenAI's envelope."""

    def __init__(
        self,
        status: int,
        message: str,
        code: str,
        *,
        type: str = "invalid_request_error",
        param: str | None = None,
        headers: list[tuple[bytes, bytes]] | None = None,
    ) -> None:
        super().__init__(message)
        self.status, self.message, self.code, self.type = status, message, code, type
        self.param, self.headers = param, headers or []

    def body(self) -> bytes:
        error = {"message": self.message, "type": self.type, "param": self.param, "code": self.code}
        return orjson.dumps({"error": error})


def unauthorized() -> GatewayError:
    # One body for a missing, unknown, wrong, revoked or expired key: nothing to probe.
    return GatewayError(401, "Incorrect API key provided.", "invalid_api_key")


def retry_after(seconds: float) -> list[tuple[bytes, bytes]]:
    """A ``Retry-After`` header of at least one whole second."""
    return [(b"retry-after", str(max(1, math.ceil(seconds))).encode())]

"""The gateway's refusals, in OpenAI's error envelope.

Guarantees: every refusal is a ``GatewayError`` whose ``body()`` is
``{"error": {"message", "type", "param", "code"}}`` with a code registered in
:mod:`inventiv.error_codes` (plain Python, no Django), which also fixes its status and type;
the dispatcher in ``apps.gateway.app`` turns it into the response (status, envelope, extra
headers such as ``Retry-After``). A missing, unknown, wrong, revoked or expired key always
gets the same body.
"""

from __future__ import annotations

import math

import orjson

from inventiv.error_codes import CODES, envelope


class GatewayError(Exception):
    """A refusal in OpenAI's envelope; ``KeyError`` for an unregistered ``code``."""

    def __init__(
        self,
        code: str,
        message: str,
        *,
        param: str | None = None,
        headers: list[tuple[bytes, bytes]] | None = None,
    ) -> None:
        super().__init__(message)
        spec = CODES[code]
        self.status, self.type, self.code, self.message = spec.status, spec.type, code, message
        self.param, self.headers = param, headers or []

    def body(self) -> bytes:
        return orjson.dumps(envelope(self.message, self.code, self.param))


def unauthorized() -> GatewayError:
    # One body for a missing, unknown, wrong, revoked or expired key: nothing to probe.
    return GatewayError("invalid_api_key", "Incorrect API key provided.")


def retry_after(seconds: float) -> list[tuple[bytes, bytes]]:
    """A ``Retry-After`` header of at least one whole second."""
    return [(b"retry-after", str(max(1, math.ceil(seconds))).encode())]

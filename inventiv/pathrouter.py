"""Sends ``/v1`` HTTP requests to the gateway app and the rest to Django, without touching
Django's machinery on the gateway's hot path.

Everything under ``/v1`` is the gateway's, so that every answer there (unknown paths and wrong
methods included) is OpenAI's error envelope, never a Django page: the prefix is matched
case-insensitively and after collapsing leading slashes (``/V1/models``, ``//v1/models``).
"""

from __future__ import annotations

from typing import Any

from asgiref.typing import ASGIReceiveCallable, ASGISendCallable

GATEWAY_PREFIX = "/v1"


def is_gateway_path(path: str) -> bool:
    """True for ``/v1`` and every path under it, whatever the case and leading slashes."""
    stripped, name = path.lstrip("/"), GATEWAY_PREFIX[1:]
    return stripped[: len(name)].lower() == name and stripped[len(name) : len(name) + 1] in (
        "",
        "/",
    )


class PathPrefixRouter:
    def __init__(self, *, gateway: Any | None, default: Any) -> None:
        self.gateway = gateway
        self.default = default

    async def __call__(
        self, scope: dict[str, Any], receive: ASGIReceiveCallable, send: ASGISendCallable
    ) -> None:
        if self.gateway is not None and is_gateway_path(scope.get("path", "")):
            await self.gateway(scope, receive, send)
            return
        await self.default(scope, receive, send)

"""Sends ``/v1`` HTTP requests to the gateway app and the rest to Django, without touching
Django's machinery on the gateway's hot path."""

from __future__ import annotations

from typing import Any

from asgiref.typing import ASGIReceiveCallable, ASGISendCallable

GATEWAY_PREFIX = "/v1"


class PathPrefixRouter:
    def __init__(self, *, gateway: Any | None, default: Any) -> None:
        self.gateway = gateway
        self.default = default

    async def __call__(
        self, scope: dict[str, Any], receive: ASGIReceiveCallable, send: ASGISendCallable
    ) -> None:
        path = scope.get("path", "")
        if self.gateway is not None and (
            path == GATEWAY_PREFIX or path.startswith(GATEWAY_PREFIX + "/")
        ):
            await self.gateway(scope, receive, send)
            return
        await self.default(scope, receive, send)

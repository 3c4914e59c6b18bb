"""The agent's client for the control plane's internal agent API.

One ``httpx.AsyncClient`` with explicit timeouts, which keeps no connection idle: every request
asks the server to close its connection after the answer (``Connection: close``). A connection
kept between beats would sit idle for the whole heartbeat interval, and the web role's uvicorn
counts idle connections in its ``--limit-concurrency``: with one per agent, a fleet larger than
the limit would get 503s (docs/operations.md, "A fleet of thousands of machines"). A connection
per beat costs the web worker about 0.1 ms of CPU more (bench/fleet.py). Errors are typed:
:class:`ControlPlaneRejected` (the control plane said no: 400/401/403 or another non-retryable
4xx; retrying will not help) and :class:`ControlPlaneUnavailable` (network error, timeout, 5xx,
408/429, or an unparseable answer: transient). Credentials are sent only in the
``Authorization`` header and never appear in exception messages. Every heartbeat carries the
agent's release (``agent.__version__``) unless the caller set one.
"""

from __future__ import annotations

from typing import TypeVar

import httpx
from pydantic import BaseModel, ValidationError

from agent import __version__
from agent.protocol import (
    HEARTBEAT_PATH,
    REGISTER_PATH,
    Heartbeat,
    HeartbeatResponse,
    RegisterRequest,
    RegisterResponse,
)

DEFAULT_TIMEOUT = httpx.Timeout(10.0, connect=5.0)
_TRANSIENT_4XX = frozenset({408, 425, 429})
_Answer = TypeVar("_Answer", bound=BaseModel)


class ControlPlaneError(Exception):
    def __init__(self, message: str, status: int | None = None) -> None:
        super().__init__(message)
        self.status = status


class ControlPlaneRejected(ControlPlaneError):
    """Permanent: the request was refused; ``status`` is the HTTP status."""


class ControlPlaneUnavailable(ControlPlaneError):
    """Transient: retry later."""


def _error_message(response: httpx.Response) -> str:
    try:
        error = response.json()["error"]
        return f"HTTP {response.status_code} {error.get('code')}: {error.get('message')}"
    except (ValueError, KeyError, TypeError, AttributeError):
        return f"HTTP {response.status_code}"


class ControlPlaneClient:
    def __init__(self, base_url: str, *, timeout: httpx.Timeout = DEFAULT_TIMEOUT) -> None:
        self._client = httpx.AsyncClient(base_url=base_url.rstrip("/"), timeout=timeout)

    async def aclose(self) -> None:
        await self._client.aclose()

    async def _post(
        self,
        path: str,
        message: BaseModel,
        answer: type[_Answer],
        *,
        credential: str | None = None,
        request_timeout_s: float | None = None,
    ) -> _Answer:
        headers = {"Content-Type": "application/json", "Connection": "close"}
        if credential is not None:
            headers["Authorization"] = f"Bearer {credential}"
        try:
            response = await self._client.post(
                path,
                content=message.model_dump_json(),
                headers=headers,
                timeout=(
                    request_timeout_s if request_timeout_s is not None else httpx.USE_CLIENT_DEFAULT
                ),
            )
        except httpx.HTTPError as exc:
            raise ControlPlaneUnavailable(f"POST {path}: {type(exc).__name__}: {exc}") from None
        status = response.status_code
        if status >= 500 or status in _TRANSIENT_4XX:
            raise ControlPlaneUnavailable(f"POST {path}: {_error_message(response)}", status)
        if status >= 400:
            raise ControlPlaneRejected(f"POST {path}: {_error_message(response)}", status)
        try:
            return answer.model_validate_json(response.content)
        except ValidationError as exc:
            raise ControlPlaneUnavailable(
                f"POST {path}: malformed answer ({exc.error_count()} errors)", status
            ) from None

    async def register(self, request: RegisterRequest) -> RegisterResponse:
        return await self._post(REGISTER_PATH, request, RegisterResponse)

    async def heartbeat(
        self, credential: str, heartbeat: Heartbeat, *, request_timeout_s: float | None = None
    ) -> HeartbeatResponse:
        if not heartbeat.agent_version:
            heartbeat = heartbeat.model_copy(update={"agent_version": __version__})
        return await self._post(
            HEARTBEAT_PATH,
            heartbeat,
            HeartbeatResponse,
            credential=credential,
            request_timeout_s=request_timeout_s,
        )

"""The Scaleway SDK, made safe to call from a worker: one pooled ``requests`` session per
thread, a timeout on every HTTP call (``INVENTIV_PROVIDER_CALL_TIMEOUT_S``; the SDK sets none),
credentials validated without echoing them, and every SDK error raised as our typed error
(``call``). Unreachable API: ``TransientProviderError`` (the request may have been applied:
callers converge by looking for our tags)."""

from __future__ import annotations

import json
import os
import threading
from typing import Any

import requests
from scaleway.block.v1 import BlockV1API
from scaleway.instance.v1.custom_api import InstanceUtilsV1API
from scaleway.marketplace.v2 import MarketplaceV2API
from scaleway_core.api import API, ScalewayException
from scaleway_core.client import Client

from apps.instances.providers.base import AuthenticationFailed, TransientProviderError
from apps.instances.providers.common import call_timeout
from apps.instances.providers.scaleway.errors import error_from

DEFAULT_API_URL = "https://api.scaleway.com"
PAGE_SIZE = 50

_local = threading.local()


def _session() -> requests.Session:
    """One pooled HTTP session per worker thread (requests sessions are not thread-safe)."""
    session = getattr(_local, "session", None)
    if session is None:
        session = requests.Session()
        _local.session = session
    return session


class _TimedAPI(API):
    """The SDK's request method with a pooled session and a timeout (the SDK sets none)."""

    def _request(
        self,
        method: str,
        path: str,
        params: Any = {},  # noqa: B006 - the SDK's signature
        headers: dict[str, str] = {},  # noqa: B006
        body: Any = None,
    ) -> requests.Response:
        method = method.upper()
        extra: dict[str, str] = {}
        if method in ("POST", "PUT", "PATCH"):
            extra["Content-Type"] = "application/json; charset=utf-8"
        raw_body: bytes | str = body if isinstance(body, bytes) else json.dumps(body or {})
        request_params: list[tuple[str, Any]] = []
        for key, value in params.items():
            if value is None:
                continue
            if isinstance(value, list):
                request_params.extend((key, item) for item in value)
            else:
                request_params.append((key, value))
        all_headers = {
            "accept": "application/json",
            "user-agent": self.client.user_agent,
            **extra,
            **headers,
        }
        if self.client.secret_key is not None:
            all_headers["x-auth-token"] = self.client.secret_key
        try:
            response = _session().request(
                method=method,
                url=f"{self.client.api_url}{path}",
                params=request_params,
                headers=all_headers,
                data=raw_body,
                verify=not self.client.api_allow_insecure,
                timeout=call_timeout(),
            )
        except requests.RequestException as exc:
            # The request may have been applied: callers converge by looking for our tags.
            raise TransientProviderError(
                f"Scaleway API unreachable ({type(exc).__name__})"
            ) from None
        if response.headers.get("x-total-count"):
            data = response.json()
            data["total_count"] = response.headers["x-total-count"]
            response._content = json.dumps(data).encode()
        return response


class InstanceAPI(_TimedAPI, InstanceUtilsV1API):
    pass


class BlockAPI(_TimedAPI, BlockV1API):
    pass


class MarketplaceAPI(_TimedAPI, MarketplaceV2API):
    pass


def sdk_client(
    *,
    access_key: str | None,
    secret_key: str | None,
    project_id: str,
    zone: str,
    api_url: str | None,
    page_size: int,
) -> Client:
    """An SDK client for one provider. ``api_url``: the provider's setting, else
    ``SCW_API_URL``, else the public API. Raises AuthenticationFailed on bad keys or settings,
    without quoting them."""
    client = Client()
    client.access_key = access_key
    client.secret_key = secret_key
    client.default_project_id = project_id or None
    client.default_zone = zone
    client.default_region = zone.rsplit("-", 1)[0]
    client.default_page_size = page_size
    client.api_url = (api_url or os.environ.get("SCW_API_URL") or DEFAULT_API_URL).rstrip("/")
    try:
        client.validate()
    except ValueError as exc:
        # The SDK's message may quote the key: say only what is wrong.
        raise AuthenticationFailed(
            "Scaleway credentials or settings are invalid: "
            + ("bad access/secret key" if "key" in str(exc).lower() else "bad settings")
        ) from None
    return client


def call(fn: Any, /, **kwargs: Any) -> Any:
    """``fn(**kwargs)`` with a Scaleway error raised as our typed error (``error_from``)."""
    try:
        return fn(**kwargs)
    except ScalewayException as exc:
        raise error_from(exc) from None


def tag(key: str, value: str) -> str:
    """Scaleway tags are plain strings: ours are ``key=value``."""
    return f"{key}={value}"


def tags_dict(tags: list[str] | None) -> dict[str, str]:
    out: dict[str, str] = {}
    for item in tags or []:
        key, sep, value = item.partition("=")
        if sep:
            out[key] = value
    return out

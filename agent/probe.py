"""HTTP checks against a running engine: health, model listing, warm-up, metrics.

One pooled ``httpx.AsyncClient`` per :class:`EngineProbe`; every call has a timeout. Methods
never raise on engine or network errors: they return False/None and keep the reason in
``last_error`` (which never contains the API key).
"""

from __future__ import annotations

import httpx

from agent.engines import probe_host
from agent.metrics import parse_engine_metrics
from agent.protocol import EngineMetrics, EngineSpec

PROBE_TIMEOUT = httpx.Timeout(5.0)
WARMUP_TIMEOUT = httpx.Timeout(120.0, connect=5.0)


class EngineProbe:
    def __init__(self, spec: EngineSpec) -> None:
        self.spec = spec
        self.last_error: str | None = None
        self._client = httpx.AsyncClient(
            base_url=f"http://{probe_host(spec.host)}:{spec.port}",
            headers={"Authorization": f"Bearer {spec.api_key}"},
            timeout=PROBE_TIMEOUT,
            trust_env=False,  # a proxy from the environment must not intercept localhost
        )

    async def aclose(self) -> None:
        await self._client.aclose()

    async def _get(self, path: str) -> httpx.Response | None:
        try:
            response = await self._client.get(path)
        except httpx.HTTPError as exc:
            self.last_error = f"GET {path}: {type(exc).__name__}"
            return None
        if response.status_code != 200:
            self.last_error = f"GET {path}: HTTP {response.status_code}"
            return None
        return response

    async def health(self) -> bool:
        return await self._get("/health") is not None

    async def model_listed(self) -> bool:
        response = await self._get("/v1/models")
        if response is None:
            return False
        try:
            data = response.json().get("data", [])
            listed = any(m.get("id") == self.spec.served_model_name for m in data)
        except (ValueError, AttributeError):
            self.last_error = "GET /v1/models: malformed body"
            return False
        if not listed:
            self.last_error = f"model {self.spec.served_model_name!r} not listed in /v1/models"
        return listed

    async def warm_up(self) -> bool:
        """One chat completion with ``max_tokens`` 1."""
        body = {
            "model": self.spec.served_model_name,
            "messages": [{"role": "user", "content": "ping"}],
            "max_tokens": 1,
        }
        try:
            response = await self._client.post(
                "/v1/chat/completions", json=body, timeout=WARMUP_TIMEOUT
            )
        except httpx.HTTPError as exc:
            self.last_error = f"warm-up: {type(exc).__name__}"
            return False
        if response.status_code != 200:
            self.last_error = f"warm-up: HTTP {response.status_code}"
            return False
        return True

    async def metrics(self) -> EngineMetrics | None:
        response = await self._get("/metrics")
        return None if response is None else parse_engine_metrics(response.text)

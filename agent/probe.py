"""HTTP checks against a running engine: health, model listing, warm-up, metrics.

One pooled ``httpx.AsyncClient`` per :class:`EngineProbe`; every call has a timeout. Methods
never raise on engine or network errors: they return False/None and keep the reason in
``last_error`` (which never contains the API key).

The checks fit the engine and the model's task:

* listing: vLLM's (and the mock's) ``GET /v1/models`` names the served model; TGI serves one
  model and names its ``model_id`` in ``GET /info``;
* warm-up: one request of one token through the first API the model serves, tried in order:
  chat (``/v1/chat/completions``), completion (``/v1/completions``: a base model without a chat
  template), embeddings (``/v1/embeddings``: an embedding model; not TGI, which serves none).
  A 4xx answer moves on to the next API (the engine refuses this one for this model); a 5xx, a
  timeout or a network error stops the round (the engine is still loading) and the next probe
  starts again. Which API answered is kept in :attr:`EngineProbe.task`;
* metrics: vLLM's names, or TGI's mapped onto the same fields (``agent.metrics``).
"""

from __future__ import annotations

from typing import Any

import httpx

from agent.engines import probe_host
from agent.metrics import parse_engine_metrics
from agent.protocol import EngineMetrics, EngineSpec

PROBE_TIMEOUT = httpx.Timeout(5.0)
WARMUP_TIMEOUT = httpx.Timeout(120.0, connect=5.0)
TASKS = ("chat", "completion", "embedding")


def engine_flavor(spec: EngineSpec) -> str:
    """Whose HTTP surface the engine speaks: "tgi" for TGI (and the mock in its TGI flavor),
    else "vllm"."""
    if spec.engine == "tgi" or (spec.engine == "mock" and spec.engine_args.get("flavor") == "tgi"):
        return "tgi"
    return "vllm"


def warmup_requests(spec: EngineSpec) -> list[tuple[str, str, dict[str, Any]]]:
    """``(task, path, body)`` of each warm-up, in the order they are tried."""
    model = spec.served_model_name
    tries: list[tuple[str, str, dict[str, Any]]] = [
        (
            "chat",
            "/v1/chat/completions",
            {"model": model, "messages": [{"role": "user", "content": "ping"}], "max_tokens": 1},
        ),
        ("completion", "/v1/completions", {"model": model, "prompt": "ping", "max_tokens": 1}),
    ]
    if engine_flavor(spec) != "tgi":
        tries.append(("embedding", "/v1/embeddings", {"model": model, "input": "ping"}))
    return tries


class EngineProbe:
    def __init__(self, spec: EngineSpec) -> None:
        self.spec = spec
        self.flavor = engine_flavor(spec)
        self.last_error: str | None = None
        self.task: str = ""  # the API the warm-up found the model serves
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
        if self.flavor == "tgi":
            return await self._tgi_model_listed()
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

    async def _tgi_model_listed(self) -> bool:
        response = await self._get("/info")
        if response is None:
            return False
        try:
            model_id = response.json().get("model_id")
        except (ValueError, AttributeError):
            self.last_error = "GET /info: malformed body"
            return False
        if model_id != self.spec.model_id:
            self.last_error = f"GET /info: serves {model_id!r}, not {self.spec.model_id!r}"
            return False
        return True

    async def warm_up(self) -> bool:
        """One request of one token through the first API the model serves (see the module)."""
        for task, path, body in warmup_requests(self.spec):
            try:
                response = await self._client.post(path, json=body, timeout=WARMUP_TIMEOUT)
            except httpx.HTTPError as exc:
                self.last_error = f"warm-up {path}: {type(exc).__name__}"
                return False
            if response.status_code == 200:
                self.task = task
                return True
            self.last_error = f"warm-up {path}: HTTP {response.status_code}"
            if response.status_code >= 500 or response.status_code in (401, 403, 408, 429):
                return False  # loading, overloaded or refusing the key: not the model's task
        return False

    async def metrics(self) -> EngineMetrics | None:
        response = await self._get("/metrics")
        if response is None:
            return None
        return parse_engine_metrics(response.text, self.flavor)

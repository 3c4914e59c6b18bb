"""Cross-encoder and tokenizer endpoints: rerank, score, tokenize, detokenize (vLLM's).

Authenticated, routed, rate-limited and recorded like every inference endpoint
(``apps.gateway.app``); never streamed. Paths: ``/v1/rerank``, ``/rerank``, ``/v2/rerank``
(Cohere / Jina clients) go to the engine's ``/v1/rerank``; ``/v1/score`` and ``/score`` to
``/v1/score``; ``/tokenize``, ``/detokenize`` (and the same under ``/v1``, the web role's
prefix) to the engine's ``/tokenize`` and ``/detokenize``. Only engines that serve them
(``apps.gateway.capabilities``: vLLM, the mock) get them; others 400
``endpoint_not_supported``.

Usage: the engine's ``usage`` (``prompt_tokens``, else ``total_tokens`` as vLLM's rerank
reports it) as input tokens, no output tokens; tokenize and detokenize run no model and are
recorded with zero tokens.
"""

from __future__ import annotations

from typing import Any

import orjson

from apps.gateway.capabilities import serves
from apps.gateway.errors import GatewayError
from apps.gateway.request import Message, Request, Send

ENGINE_PATHS = {
    "rerank": "/v1/rerank",
    "score": "/v1/score",
    "tokenize": "/tokenize",
    "detokenize": "/detokenize",
}
REQUIRED = {
    "rerank": ("query", "documents"),
    "score": ("text_1", "text_2"),
    "detokenize": ("tokens",),
}


def prepare(data: dict[str, Any], endpoint: str, engine: str) -> str:
    """The engine path for ``endpoint``; 400 for a missing field or an engine without it."""
    for param in REQUIRED.get(endpoint, ()):
        if param not in data:
            raise GatewayError("invalid_value", f"`{param}` is required.", param=param)
    if endpoint == "tokenize" and "prompt" not in data and "messages" not in data:
        raise GatewayError("invalid_value", "`prompt` or `messages` is required.", param="prompt")
    if not serves(engine, endpoint):
        raise GatewayError(
            "endpoint_not_supported",
            f"The engine of model `{str(data.get('model'))[:64]}` does not serve {endpoint}.",
            param="model",
        )
    return ENGINE_PATHS[endpoint]


class PooledSend:
    """Takes the usage of a plain JSON answer into the request before it goes on."""

    def __init__(self, send: Send, req: Request) -> None:
        self.send, self.req = send, req
        self.status = 200
        self.parts: list[bytes] = []

    async def __call__(self, message: Message) -> None:
        if message["type"] == "http.response.start":
            self.status = message["status"]
        elif message["type"] == "http.response.body" and self.status == 200:
            self.parts.append(message.get("body", b""))
            if not message.get("more_body", False):
                self._take(b"".join(self.parts))
        await self.send(message)

    def _take(self, body: bytes) -> None:
        try:
            usage = orjson.loads(body).get("usage")
        except (orjson.JSONDecodeError, AttributeError):
            return
        if isinstance(usage, dict):
            tokens = usage.get("prompt_tokens") or usage.get("total_tokens") or 0
            self.req.prompt_tokens = int(tokens)
            self.req.completion_tokens = 0

"""The mock engine as a raw ASGI application (no framework: it must be fast).

Speaks the subset of vLLM's OpenAI-compatible API the platform uses, with deterministic output
(see :mod:`agent.mock_engine.tokens`), vLLM-named Prometheus metrics, and fault injection under
``/mock/`` for tests. Every ``/v1/*`` and ``/mock/*`` route requires ``Authorization: Bearer
<api key>``; ``/health`` and ``/metrics`` do not (as in vLLM).
"""

from __future__ import annotations

import asyncio
import base64
import hmac
import itertools
import os
import secrets
import struct
import time
from collections.abc import Awaitable, Callable, MutableMapping
from dataclasses import dataclass
from typing import Any

import orjson

from agent.mock_engine.stats import Stats
from agent.mock_engine.tokens import (
    chat_prompt,
    completion_prompt,
    embedding,
    seed_of,
    token_words,
)

Scope = MutableMapping[str, Any]
Message = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]

_JSON_HEADERS = [(b"content-type", b"application/json")]
_SSE_HEADERS = [(b"content-type", b"text/event-stream"), (b"cache-control", b"no-cache")]
_METRICS_HEADERS = [(b"content-type", b"text/plain; version=0.0.4; charset=utf-8")]
_DONE = b"data: [DONE]\n\n"


@dataclass(frozen=True)
class MockConfig:
    served_model_name: str
    model_id: str
    api_key: str
    token_rate: float = 0.0
    default_max_tokens: int = 16
    startup_delay_s: float = 0.0
    embedding_dim: int = 8


class HttpError(Exception):
    """An OpenAI-shaped error response."""

    def __init__(self, status: int, message: str, code: str, param: str | None = None) -> None:
        super().__init__(message)
        self.status, self.message, self.code, self.param = status, message, code, param

    def body(self) -> bytes:
        kind = "invalid_request_error" if self.status < 500 else "server_error"
        error = {"message": self.message, "type": kind, "param": self.param, "code": self.code}
        return orjson.dumps({"error": error})


@dataclass
class Faults:
    """Pending injected faults; consumed by inference requests (chat, completions, embeddings)."""

    fail_next: int = 0
    fail_status: int = 500
    hang_next: int = 0
    unhealthy: bool = False


async def _read_body(receive: Receive) -> bytes:
    message = await receive()
    body: bytes = message.get("body", b"")
    if not message.get("more_body", False):
        return body
    chunks = [body]
    while message.get("more_body", False):
        message = await receive()
        chunks.append(message.get("body", b""))
    return b"".join(chunks)


async def _wait_disconnect(receive: Receive) -> None:
    while (await receive())["type"] != "http.disconnect":
        pass


async def _respond(
    send: Send, status: int, body: bytes, headers: list[tuple[bytes, bytes]]
) -> None:
    headers = [*headers, (b"content-length", str(len(body)).encode())]
    await send({"type": "http.response.start", "status": status, "headers": headers})
    await send({"type": "http.response.body", "body": body})


def _max_tokens(req: dict[str, Any], default: int) -> int:
    for key in ("max_tokens", "max_completion_tokens"):
        value: object = req.get(key)
        if value is None:
            continue
        if isinstance(value, bool) or not isinstance(value, int) or value < 1:
            raise HttpError(400, f"{key} must be a positive integer", "invalid_value", key)
        return value
    return default


def _include_usage(req: dict[str, Any]) -> bool:
    options = req.get("stream_options")
    return isinstance(options, dict) and options.get("include_usage") is True


def _usage(prompt_tokens: int, completion_tokens: int) -> dict[str, Any]:
    return {
        "prompt_tokens": prompt_tokens,
        "total_tokens": prompt_tokens + completion_tokens,
        "completion_tokens": completion_tokens,
        "prompt_tokens_details": None,
    }


class MockEngine:
    """The ASGI callable. One instance per process; state lives on the event loop thread."""

    def __init__(self, config: MockConfig) -> None:
        self.config = config
        self.stats = Stats(model_name=config.served_model_name)
        self.faults = Faults()
        self.last_request: bytes = b"null"
        self._started = time.monotonic()
        self._auth = b"Bearer " + config.api_key.encode()
        self._ids = itertools.count(1)
        self._id_prefix = secrets.token_hex(4)
        self._models_body = orjson.dumps(
            {
                "object": "list",
                "data": [
                    {
                        "id": config.served_model_name,
                        "object": "model",
                        "created": int(time.time()),
                        "owned_by": "vllm",
                        "root": config.model_id,
                        "parent": None,
                        "max_model_len": 4096,
                        "permission": [],
                    }
                ],
            }
        )
        self._routes: dict[tuple[str, str], Callable[[Scope, Receive, Send], Awaitable[None]]] = {
            ("POST", "/v1/chat/completions"): self._chat,
            ("POST", "/v1/completions"): self._completions,
            ("POST", "/v1/embeddings"): self._embeddings,
            ("GET", "/v1/models"): self._models,
            ("POST", "/mock/control"): self._control,
            ("GET", "/mock/last_request"): self._last_request,
        }

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            return
        path: str = scope["path"]
        method: str = scope["method"]
        try:
            if path == "/health":
                await self._health(send)
                return
            if path == "/metrics":
                await _respond(send, 200, self.stats.render(), _METRICS_HEADERS)
                return
            handler = self._routes.get((method, path))
            if handler is None:
                if any(p == path for _, p in self._routes):
                    raise HttpError(405, "Method Not Allowed", "method_not_allowed")
                raise HttpError(404, f"Not Found: {path}", "not_found")
            self._authorize(scope)
            await handler(scope, receive, send)
        except HttpError as exc:
            await _respond(send, exc.status, exc.body(), _JSON_HEADERS)

    def _authorize(self, scope: Scope) -> None:
        for name, value in scope["headers"]:
            if name == b"authorization":
                if hmac.compare_digest(value, self._auth):
                    return
                break
        raise HttpError(401, "Incorrect API key provided.", "invalid_api_key")

    async def _health(self, send: Send) -> None:
        warming = time.monotonic() - self._started < self.config.startup_delay_s
        status = 503 if warming or self.faults.unhealthy else 200
        await _respond(send, status, b"", [])

    async def _models(self, scope: Scope, receive: Receive, send: Send) -> None:
        await _respond(send, 200, self._models_body, _JSON_HEADERS)

    async def _last_request(self, scope: Scope, receive: Receive, send: Send) -> None:
        await _respond(send, 200, self.last_request, _JSON_HEADERS)

    async def _control(self, scope: Scope, receive: Receive, send: Send) -> None:
        try:
            req = orjson.loads(await _read_body(receive))
        except orjson.JSONDecodeError:
            raise HttpError(400, "body is not valid JSON", "invalid_json") from None
        if not isinstance(req, dict):
            raise HttpError(400, "body must be a JSON object", "invalid_json")
        if req.get("crash") is True:
            os._exit(1)
        f = self.faults
        for key in ("fail_next", "fail_status", "hang_next"):
            if key in req:
                value = req[key]
                if isinstance(value, bool) or not isinstance(value, int) or value < 0:
                    raise HttpError(
                        400, f"{key} must be a non-negative integer", "invalid_value", key
                    )
                setattr(f, key, value)
        if "unhealthy" in req:
            f.unhealthy = req["unhealthy"] is True
        state = {
            "fail_next": f.fail_next,
            "fail_status": f.fail_status,
            "hang_next": f.hang_next,
            "unhealthy": f.unhealthy,
        }
        await _respond(send, 200, orjson.dumps(state), _JSON_HEADERS)

    async def _parse(self, receive: Receive) -> dict[str, Any]:
        """Read, record and parse an inference request; apply injected failures."""
        body = await _read_body(receive)
        self.last_request = body
        try:
            req = orjson.loads(body)
        except orjson.JSONDecodeError:
            raise HttpError(400, "body is not valid JSON", "invalid_json") from None
        if not isinstance(req, dict):
            raise HttpError(400, "body must be a JSON object", "invalid_json")
        model = req.get("model")
        if model is not None and model != self.config.served_model_name:
            raise HttpError(404, f"The model `{model}` does not exist.", "model_not_found", "model")
        if self.faults.fail_next:
            self.faults.fail_next -= 1
            raise HttpError(self.faults.fail_status, "injected failure", "mock_injected_failure")
        return req

    def _next_id(self, prefix: str) -> str:
        return f"{prefix}-{self._id_prefix}{next(self._ids):08x}"

    async def _maybe_hang(self, receive: Receive) -> bool:
        if not self.faults.hang_next:
            return False
        self.faults.hang_next -= 1
        await _wait_disconnect(receive)
        return True

    async def _chat(self, scope: Scope, receive: Receive, send: Send) -> None:
        await self._generate(receive, send, chat=True)

    async def _completions(self, scope: Scope, receive: Receive, send: Send) -> None:
        await self._generate(receive, send, chat=False)

    async def _generate(self, receive: Receive, send: Send, *, chat: bool) -> None:
        req = await self._parse(receive)
        if chat:
            messages = req.get("messages")
            if not isinstance(messages, list) or not messages:
                raise HttpError(
                    400, "messages must be a non-empty list", "invalid_value", "messages"
                )
            text, prompt_tokens = chat_prompt(messages)
        else:
            if "prompt" not in req:
                raise HttpError(400, "prompt is required", "invalid_value", "prompt")
            text, prompt_tokens = completion_prompt(req["prompt"])
        n = _max_tokens(req, self.config.default_max_tokens)
        words = token_words(seed_of(text), n)
        stats = self.stats
        stats.running += 1
        try:
            if await self._maybe_hang(receive):
                return
            if req.get("stream") is True:
                await self._stream(req, receive, send, chat, words, prompt_tokens)
            else:
                await self._complete(send, chat, words, prompt_tokens)
        finally:
            stats.running -= 1

    async def _complete(self, send: Send, chat: bool, words: list[str], prompt_tokens: int) -> None:
        start = time.perf_counter()
        rate = self.config.token_rate
        if rate > 0:
            await asyncio.sleep(len(words) / rate)
        content = "".join(words)
        if chat:
            choice: dict[str, Any] = {
                "index": 0,
                "message": {"role": "assistant", "content": content, "tool_calls": []},
                "logprobs": None,
                "finish_reason": "length",
                "stop_reason": None,
            }
        else:
            choice = {
                "index": 0,
                "text": content,
                "logprobs": None,
                "finish_reason": "length",
                "stop_reason": None,
            }
        body = orjson.dumps(
            {
                "id": self._next_id("chatcmpl" if chat else "cmpl"),
                "object": "chat.completion" if chat else "text_completion",
                "created": int(time.time()),
                "model": self.config.served_model_name,
                "choices": [choice],
                "usage": _usage(prompt_tokens, len(words)),
            }
        )
        await _respond(send, 200, body, _JSON_HEADERS)
        e2e = time.perf_counter() - start
        ttft = 1 / rate if rate > 0 else e2e
        self.stats.finished(
            prompt_tokens=prompt_tokens, generation_tokens=len(words), ttft=ttft, e2e=e2e
        )

    async def _stream(
        self,
        req: dict[str, Any],
        receive: Receive,
        send: Send,
        chat: bool,
        words: list[str],
        prompt_tokens: int,
    ) -> None:
        start = time.perf_counter()
        rate = self.config.token_rate
        include_usage = _include_usage(req)
        base: dict[str, Any] = {
            "id": self._next_id("chatcmpl" if chat else "cmpl"),
            "object": "chat.completion.chunk" if chat else "text_completion",
            "created": int(time.time()),
            "model": self.config.served_model_name,
        }

        def event(choices: list[dict[str, Any]], usage: dict[str, Any] | None = None) -> bytes:
            chunk = {**base, "choices": choices}
            if include_usage:
                chunk["usage"] = usage
            return b"data: " + orjson.dumps(chunk) + b"\n\n"

        def choice(text: str, finish: str | None, first: bool = False) -> dict[str, Any]:
            if chat:
                delta = {"role": "assistant", "content": text} if first else {"content": text}
                return {"index": 0, "delta": delta, "logprobs": None, "finish_reason": finish}
            return {
                "index": 0,
                "text": text,
                "logprobs": None,
                "finish_reason": finish,
                "stop_reason": None,
            }

        disconnected = asyncio.Event()

        async def watch() -> None:
            await _wait_disconnect(receive)
            disconnected.set()

        watcher = asyncio.ensure_future(watch()) if rate > 0 else None
        sent = 0
        ttft = 0.0
        try:
            await send({"type": "http.response.start", "status": 200, "headers": _SSE_HEADERS})
            if chat:
                await send(
                    {
                        "type": "http.response.body",
                        "body": event([choice("", None, True)]),
                        "more_body": True,
                    }
                )
            last = len(words) - 1
            for i, word in enumerate(words):
                if rate > 0:
                    await asyncio.sleep(1 / rate)
                    if disconnected.is_set():
                        return
                body = event([choice(word, "length" if i == last else None)])
                await send({"type": "http.response.body", "body": body, "more_body": True})
                if i == 0:
                    ttft = time.perf_counter() - start
                sent += 1
            tail = _DONE
            if include_usage:
                tail = event([], _usage(prompt_tokens, len(words))) + _DONE
            await send({"type": "http.response.body", "body": tail, "more_body": False})
        finally:
            if watcher is not None:
                watcher.cancel()
        self.stats.finished(
            prompt_tokens=prompt_tokens,
            generation_tokens=sent,
            ttft=ttft,
            e2e=time.perf_counter() - start,
        )

    async def _embeddings(self, scope: Scope, receive: Receive, send: Send) -> None:
        req = await self._parse(receive)
        raw = req.get("input")
        inputs: list[str]
        if isinstance(raw, str):
            inputs = [raw]
        elif isinstance(raw, list) and raw and all(isinstance(x, str) for x in raw):
            inputs = raw
        elif isinstance(raw, list) and raw and all(isinstance(x, int) for x in raw):
            inputs = [" ".join(map(str, raw))]
        elif isinstance(raw, list) and raw and all(isinstance(x, list) for x in raw):
            inputs = [" ".join(map(str, x)) for x in raw]
        else:
            raise HttpError(400, "input must be a string or a list", "invalid_value", "input")
        fmt = req.get("encoding_format", "float")
        if fmt not in ("float", "base64"):
            raise HttpError(
                400, "encoding_format must be float or base64", "invalid_value", "encoding_format"
            )
        dim = self.config.embedding_dim
        stats = self.stats
        stats.running += 1
        try:
            if await self._maybe_hang(receive):
                return
            start = time.perf_counter()
            data = []
            prompt_tokens = 0
            for index, text in enumerate(inputs):
                vector = embedding(text, dim)
                prompt_tokens += max(1, len(text.split()))
                value: list[float] | str = vector
                if fmt == "base64":
                    value = base64.b64encode(struct.pack(f"<{dim}f", *vector)).decode()
                data.append({"object": "embedding", "index": index, "embedding": value})
            body = orjson.dumps(
                {
                    "id": self._next_id("embd"),
                    "object": "list",
                    "created": int(time.time()),
                    "model": self.config.served_model_name,
                    "data": data,
                    "usage": {
                        "prompt_tokens": prompt_tokens,
                        "total_tokens": prompt_tokens,
                        "completion_tokens": 0,
                        "prompt_tokens_details": None,
                    },
                }
            )
            await _respond(send, 200, body, _JSON_HEADERS)
            e2e = time.perf_counter() - start
            stats.finished(
                prompt_tokens=prompt_tokens, generation_tokens=0, ttft=e2e, e2e=e2e, reason="stop"
            )
        finally:
            stats.running -= 1

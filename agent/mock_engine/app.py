"""The mock engine as a raw ASGI application (no framework: it must be fast).

Speaks the subset of vLLM's OpenAI-compatible API the platform uses (request fields and
response bodies in :mod:`agent.mock_engine.openai_api`), with deterministic output (see
:mod:`agent.mock_engine.tokens`), vLLM-named Prometheus metrics, and fault injection under
``/mock/`` for tests. Every ``/v1/*`` and ``/mock/*`` route requires ``Authorization: Bearer
<api key>``; ``/health`` and ``/metrics`` do not (as in vLLM).
"""

from __future__ import annotations

import asyncio
import hmac
import itertools
import os
import secrets
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any

import orjson

from agent.mock_engine import openai_api as api
from agent.mock_engine import pooling, responses, sampling
from agent.mock_engine.asgi import (
    JSON_HEADERS,
    METRICS_HEADERS,
    SSE_HEADERS,
    HttpError,
    Receive,
    Scope,
    Send,
    json_object,
    read_body,
    respond,
    wait_disconnect,
)
from agent.mock_engine.stats import Stats
from agent.mock_engine.tokens import embedding, seed_of, token_words


@dataclass(frozen=True)
class MockConfig:
    served_model_name: str
    model_id: str
    api_key: str
    token_rate: float = 0.0
    default_max_tokens: int = 16
    startup_delay_s: float = 0.0
    embedding_dim: int = 8
    max_model_len: int = 4096  # prompt + completion tokens, as vLLM's --max-model-len
    # Which API the model serves: "chat" (every endpoint, the mock's default), "completion" (a
    # base model: no chat template, no embeddings), "embedding" (an embedding model: only
    # /v1/embeddings), the others refused with the real engine's status.
    task: str = "chat"
    # Whose surface it speaks: "vllm", or "tgi" (TGI's metric names, /info and /generate, no
    # embeddings, no rerank/score/tokenize, 422 for a chat without a template).
    flavor: str = "vllm"


@dataclass
class Faults:
    """Pending injected faults; consumed by inference requests (chat, completions, embeddings)."""

    fail_next: int = 0
    fail_status: int = 500
    hang_next: int = 0
    unhealthy: bool = False


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
        self._models_body = api.models_body(
            served_model_name=config.served_model_name,
            model_id=config.model_id,
            max_model_len=config.max_model_len,
        )
        routes: dict[tuple[str, str], Callable[[Scope, Receive, Send], Awaitable[None]]] = {
            ("POST", "/v1/chat/completions"): self._chat,
            ("POST", "/v1/completions"): self._completions,
            ("POST", "/v1/embeddings"): self._embeddings,
            ("POST", "/v1/responses"): self._responses,
            ("POST", "/v1/rerank"): self._rerank,
            ("POST", "/rerank"): self._rerank,
            ("POST", "/v2/rerank"): self._rerank,
            ("POST", "/v1/score"): self._score,
            ("POST", "/score"): self._score,
            ("POST", "/tokenize"): self._tokenize,
            ("POST", "/detokenize"): self._detokenize,
            ("GET", "/v1/models"): self._models,
            ("POST", "/mock/control"): self._control,
            ("GET", "/mock/last_request"): self._last_request,
        }
        if config.flavor == "tgi":
            vllm_only = ("/v1/embeddings", "/v1/responses", "/v1/rerank", "/rerank", "/v2/rerank")
            for key in [k for k in routes if k[1] in vllm_only or "score" in k[1] or "tok" in k[1]]:
                del routes[key]
            routes[("POST", "/generate")] = self._generate_tgi
            routes[("GET", "/info")] = self._info
        self._routes = routes
        self.stats.flavor = config.flavor

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
                await respond(send, 200, self.stats.render(), METRICS_HEADERS)
                return
            handler = self._routes.get((method, path))
            if handler is None:
                if any(p == path for _, p in self._routes):
                    raise HttpError(405, "Method Not Allowed", "method_not_allowed")
                raise HttpError(404, f"Not Found: {path}", "not_found")
            self._authorize(scope)
            await handler(scope, receive, send)
        except HttpError as exc:
            await respond(send, exc.status, exc.body(), JSON_HEADERS)

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
        await respond(send, status, b"", [])

    async def _models(self, scope: Scope, receive: Receive, send: Send) -> None:
        await respond(send, 200, self._models_body, JSON_HEADERS)

    async def _info(self, scope: Scope, receive: Receive, send: Send) -> None:
        """TGI's ``GET /info`` (the fields the agent reads, and a few more)."""
        body = {
            "model_id": self.config.model_id,
            "max_total_tokens": self.config.max_model_len,
            "max_input_tokens": self.config.max_model_len - 1,
            "router": "text-generation-router",
            "version": "3.0.0-mock",
        }
        await respond(send, 200, orjson.dumps(body), JSON_HEADERS)

    async def _generate_tgi(self, scope: Scope, receive: Receive, send: Send) -> None:
        """TGI's native ``POST /generate``: ``{"inputs", "parameters": {"max_new_tokens"}}``."""
        self._check_task("completions")
        req = await self._parse(receive)
        inputs = req.get("inputs")
        if not isinstance(inputs, str):
            raise HttpError(422, "inputs must be a string", "validation", "inputs")
        raw = req.get("parameters")
        params: dict[str, Any] = raw if isinstance(raw, dict) else {}
        n = params.get("max_new_tokens", self.config.default_max_tokens)
        if isinstance(n, bool) or not isinstance(n, int) or n < 1:
            raise HttpError(422, "max_new_tokens must be positive", "validation", "parameters")
        text, prompt_tokens = api.prompt({"prompt": inputs}, chat=False)
        api.check_context({}, prompt_tokens, n, self.config.max_model_len)
        words = token_words(seed_of(text), n)
        await respond(send, 200, orjson.dumps({"generated_text": "".join(words)}), JSON_HEADERS)
        self.stats.finished(prompt_tokens=prompt_tokens, generation_tokens=n, ttft=0.0, e2e=0.0)

    async def _last_request(self, scope: Scope, receive: Receive, send: Send) -> None:
        await respond(send, 200, self.last_request, JSON_HEADERS)

    async def _control(self, scope: Scope, receive: Receive, send: Send) -> None:
        req = json_object(await read_body(receive))
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
        await respond(send, 200, orjson.dumps(state), JSON_HEADERS)

    async def _parse(self, receive: Receive) -> dict[str, Any]:
        """Read, record and parse an inference request; apply injected failures."""
        body = await read_body(receive)
        self.last_request = body
        req = json_object(body)
        model = req.get("model")
        # TGI serves one model and ignores the field ("[UNUSED]" in its API).
        tgi = self.config.flavor == "tgi"
        if model is not None and model != self.config.served_model_name and not tgi:
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
        await wait_disconnect(receive)
        return True

    async def _chat(self, scope: Scope, receive: Receive, send: Send) -> None:
        await self._generate(receive, send, chat=True)

    async def _completions(self, scope: Scope, receive: Receive, send: Send) -> None:
        await self._generate(receive, send, chat=False)

    def _check_task(self, endpoint: str) -> None:
        """Refuse what the model cannot serve, with the real engine's status."""
        task = self.config.task
        if task == "embedding" and endpoint != "embeddings":
            raise HttpError(
                400, "The model does not support this API (an embedding model).", "bad_request"
            )
        if task == "completion" and endpoint == "embeddings":
            raise HttpError(400, "The model does not support Embeddings API.", "bad_request")
        if task == "completion" and endpoint == "chat":
            status = 422 if self.config.flavor == "tgi" else 400
            raise HttpError(status, "The model has no chat template.", "bad_request")

    async def _generate(self, receive: Receive, send: Send, *, chat: bool) -> None:
        self._check_task("chat" if chat else "completions")
        req = await self._parse(receive)
        text, prompt_tokens = api.prompt(req, chat=chat)
        n = api.max_tokens(req, self.config.default_max_tokens)
        # Before anything is allocated: vLLM refuses what its context cannot hold, too.
        api.check_context(req, prompt_tokens, n, self.config.max_model_len)
        p = sampling.params(req, chat=chat)
        id_ = self._next_id("chatcmpl" if chat else "cmpl")
        choices = sampling.choices(p, text, n, id_)
        stats = self.stats
        stats.running += 1
        try:
            if await self._maybe_hang(receive):
                return
            if req.get("stream") is True:
                await self._stream(req, receive, send, chat, id_, choices, p, prompt_tokens)
            else:
                await self._complete(send, chat, id_, choices, p, prompt_tokens)
        finally:
            stats.running -= 1

    async def _complete(
        self,
        send: Send,
        chat: bool,
        id_: str,
        choices: list[sampling.Choice],
        p: sampling.Params,
        prompt_tokens: int,
    ) -> None:
        start = time.perf_counter()
        rate = self.config.token_rate
        generated = sum(len(c.pieces) for c in choices)
        if rate > 0:
            await asyncio.sleep(max(len(c.pieces) for c in choices) / rate)
        body = api.completion_body(
            id_=id_,
            model=self.config.served_model_name,
            chat=chat,
            choices=choices,
            prompt_tokens=prompt_tokens,
            with_logprobs=p.logprobs is not None,
        )
        await respond(send, 200, body, JSON_HEADERS)
        e2e = time.perf_counter() - start
        ttft = 1 / rate if rate > 0 else e2e
        self.stats.finished(
            prompt_tokens=prompt_tokens, generation_tokens=generated, ttft=ttft, e2e=e2e
        )

    async def _stream(
        self,
        req: dict[str, Any],
        receive: Receive,
        send: Send,
        chat: bool,
        id_: str,
        choices: list[sampling.Choice],
        p: sampling.Params,
        prompt_tokens: int,
    ) -> None:
        """Chunks interleaved across choices, one token each, as vLLM streams ``n`` > 1."""
        start = time.perf_counter()
        rate = self.config.token_rate
        include_usage = api.include_usage(req)
        with_logprobs = p.logprobs is not None
        base = api.stream_base(id_=id_, model=self.config.served_model_name, chat=chat)

        def event(chunk: list[dict[str, Any]], usage: dict[str, Any] | None = None) -> bytes:
            return api.stream_event(base, chunk, usage, include_usage=include_usage)

        disconnected = asyncio.Event()

        async def watch() -> None:
            await wait_disconnect(receive)
            disconnected.set()

        watcher = asyncio.ensure_future(watch()) if rate > 0 else None
        sent = 0
        ttft = 0.0
        offsets = [0] * len(choices)
        try:
            await send({"type": "http.response.start", "status": 200, "headers": SSE_HEADERS})
            if chat:
                for c in choices:
                    body = event([api.stream_first(c)])
                    await send({"type": "http.response.body", "body": body, "more_body": True})
            steps = max(len(c.pieces) for c in choices)
            for j in range(steps):
                if rate > 0:
                    await asyncio.sleep(1 / rate)
                    if disconnected.is_set():
                        return
                for c in choices:
                    if j >= len(c.pieces):
                        continue
                    chunk = api.stream_choice(
                        c, j, chat=chat, with_logprobs=with_logprobs, offset=offsets[c.index]
                    )
                    offsets[c.index] += len(c.pieces[j])
                    body = event([chunk])
                    await send({"type": "http.response.body", "body": body, "more_body": True})
                    sent += 1
                if j == 0:
                    ttft = time.perf_counter() - start
            tail = api.DONE
            if include_usage:
                tail = event([], api.usage(prompt_tokens, sent)) + api.DONE
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

    async def _responses(self, scope: Scope, receive: Receive, send: Send) -> None:
        """``POST /v1/responses`` as vLLM serves it (stateless: ``store`` is answered false)."""
        data = await self._parse(receive)
        if data.get("previous_response_id") is not None:
            raise HttpError(
                400,
                "previous_response_id needs a stored response",
                "invalid_value",
                "previous_response_id",
            )
        try:
            req = responses.to_chat(data)
        except responses.ResponsesError as exc:
            raise HttpError(400, str(exc), "invalid_value", exc.param) from None
        text, prompt_tokens = api.prompt(req, chat=True)
        n = api.max_tokens(req, self.config.default_max_tokens)
        api.check_context(req, prompt_tokens, n, self.config.max_model_len)
        p = sampling.params(req, chat=True)
        id_ = self._next_id("chatcmpl")
        choice = sampling.choices(p, text, n, id_)[0]
        generated = len(choice.pieces)
        start = time.perf_counter()
        rate = self.config.token_rate
        self.stats.running += 1
        try:
            if await self._maybe_hang(receive):
                return
            if data.get("stream") is not True:
                if rate > 0:
                    await asyncio.sleep(generated / rate)
                chat = orjson.loads(
                    api.completion_body(
                        id_=id_,
                        model=self.config.served_model_name,
                        chat=True,
                        choices=[choice],
                        prompt_tokens=prompt_tokens,
                        with_logprobs=False,
                    )
                )
                body = orjson.dumps(responses.to_response(data, chat))
                await respond(send, 200, body, JSON_HEADERS)
            else:
                out = responses.StreamTranslator(data)
                await send({"type": "http.response.start", "status": 200, "headers": SSE_HEADERS})

                async def emit(events: list[dict[str, Any]], more: bool = True) -> None:
                    body = b"".join(responses.sse(e) for e in events)
                    await send({"type": "http.response.body", "body": body, "more_body": more})

                await emit(out.start() + out.feed({"choices": [api.stream_first(choice)]}))
                for j in range(generated):
                    if rate > 0:
                        await asyncio.sleep(1 / rate)
                    chunk = api.stream_choice(choice, j, chat=True, with_logprobs=False)
                    await emit(out.feed({"choices": [chunk]}))
                out.feed({"choices": [], "usage": api.usage(prompt_tokens, generated)})
                await emit(out.end(), more=False)
        finally:
            self.stats.running -= 1
        e2e = time.perf_counter() - start
        self.stats.finished(
            prompt_tokens=prompt_tokens, generation_tokens=generated, ttft=e2e, e2e=e2e
        )

    async def _pooled(self, receive: Receive, send: Send, kind: str) -> None:
        """Rerank or score: one forward pass over the pairs, usage as prompt tokens."""
        req = await self._parse(receive)
        model = self.config.served_model_name
        self.stats.running += 1
        try:
            if await self._maybe_hang(receive):
                return
            start = time.perf_counter()
            if kind == "rerank":
                body = pooling.rerank_body(req, id_=self._next_id("rerank"), model=model)
                tokens = orjson.loads(body)["usage"]["total_tokens"]
            else:
                body = pooling.score_body(req, id_=self._next_id("score"), model=model)
                tokens = orjson.loads(body)["usage"]["prompt_tokens"]
            await respond(send, 200, body, JSON_HEADERS)
            e2e = time.perf_counter() - start
            self.stats.finished(
                prompt_tokens=tokens, generation_tokens=0, ttft=e2e, e2e=e2e, reason="stop"
            )
        finally:
            self.stats.running -= 1

    async def _rerank(self, scope: Scope, receive: Receive, send: Send) -> None:
        await self._pooled(receive, send, "rerank")

    async def _score(self, scope: Scope, receive: Receive, send: Send) -> None:
        await self._pooled(receive, send, "score")

    async def _tokenize(self, scope: Scope, receive: Receive, send: Send) -> None:
        req = await self._parse(receive)
        body = pooling.tokenize_body(req, max_model_len=self.config.max_model_len)
        await respond(send, 200, body, JSON_HEADERS)

    async def _detokenize(self, scope: Scope, receive: Receive, send: Send) -> None:
        req = await self._parse(receive)
        await respond(send, 200, pooling.detokenize_body(req), JSON_HEADERS)

    async def _embeddings(self, scope: Scope, receive: Receive, send: Send) -> None:
        self._check_task("embeddings")
        req = await self._parse(receive)
        inputs = api.embedding_inputs(req)
        fmt = api.encoding_format(req)
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
                data.append(api.embedding_item(index, embedding(text, dim), fmt))
                prompt_tokens += max(1, len(text.split()))
            body = api.embeddings_body(
                id_=self._next_id("embd"),
                model=self.config.served_model_name,
                data=data,
                prompt_tokens=prompt_tokens,
            )
            await respond(send, 200, body, JSON_HEADERS)
            e2e = time.perf_counter() - start
            stats.finished(
                prompt_tokens=prompt_tokens, generation_tokens=0, ttft=e2e, e2e=e2e, reason="stop"
            )
        finally:
            stats.running -= 1

"""The subset of vLLM's OpenAI-compatible API the mock engine speaks: the request fields it
checks and the response bodies it builds, as pure functions (the routes, timing and state are
in :mod:`agent.mock_engine.app`). Output is deterministic (:mod:`agent.mock_engine.tokens`)."""

from __future__ import annotations

import base64
import struct
import time
from typing import Any

import orjson

from agent.mock_engine.asgi import HttpError
from agent.mock_engine.tokens import chat_prompt, completion_prompt

DONE = b"data: [DONE]\n\n"


def prompt(req: dict[str, Any], *, chat: bool) -> tuple[str, int]:
    """The prompt's text and token count, from ``messages`` (chat) or ``prompt``."""
    if chat:
        messages = req.get("messages")
        if not isinstance(messages, list) or not messages:
            raise HttpError(400, "messages must be a non-empty list", "invalid_value", "messages")
        return chat_prompt(messages)
    if "prompt" not in req:
        raise HttpError(400, "prompt is required", "invalid_value", "prompt")
    return completion_prompt(req["prompt"])


def max_tokens(req: dict[str, Any], default: int) -> int:
    for key in ("max_tokens", "max_completion_tokens"):
        value: object = req.get(key)
        if value is None:
            continue
        if isinstance(value, bool) or not isinstance(value, int) or value < 1:
            raise HttpError(400, f"{key} must be a positive integer", "invalid_value", key)
        return value
    return default


def check_context(req: dict[str, Any], prompt_tokens: int, max_tokens: int, context: int) -> None:
    """400 when the prompt plus the completion asked for exceed the context, as vLLM answers
    (an explicit ``max_tokens`` or ``max_completion_tokens`` is named in ``param``)."""
    if prompt_tokens + max_tokens <= context:
        return
    param = next(
        (k for k in ("max_tokens", "max_completion_tokens") if req.get(k) is not None), None
    )
    raise HttpError(
        400,
        f"This model's maximum context length is {context} tokens. However, you requested "
        f"{prompt_tokens + max_tokens} tokens ({prompt_tokens} in the messages, {max_tokens} in "
        "the completion). Please reduce the length of the messages or completion.",
        "invalid_value",
        param,
    )


def include_usage(req: dict[str, Any]) -> bool:
    options = req.get("stream_options")
    return isinstance(options, dict) and options.get("include_usage") is True


def usage(prompt_tokens: int, completion_tokens: int) -> dict[str, Any]:
    return {
        "prompt_tokens": prompt_tokens,
        "total_tokens": prompt_tokens + completion_tokens,
        "completion_tokens": completion_tokens,
        "prompt_tokens_details": None,
    }


def completion_body(
    *, id_: str, model: str, chat: bool, content: str, prompt_tokens: int, completion_tokens: int
) -> bytes:
    """A non-streamed chat completion or text completion (always ``finish_reason: length``)."""
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
    return orjson.dumps(
        {
            "id": id_,
            "object": "chat.completion" if chat else "text_completion",
            "created": int(time.time()),
            "model": model,
            "choices": [choice],
            "usage": usage(prompt_tokens, completion_tokens),
        }
    )


def stream_base(*, id_: str, model: str, chat: bool) -> dict[str, Any]:
    """The fields every chunk of one stream shares."""
    return {
        "id": id_,
        "object": "chat.completion.chunk" if chat else "text_completion",
        "created": int(time.time()),
        "model": model,
    }


def stream_event(
    base: dict[str, Any],
    choices: list[dict[str, Any]],
    usage: dict[str, Any] | None,
    *,
    include_usage: bool,
) -> bytes:
    """One server-sent event; with ``include_usage`` every chunk has ``usage`` (null but the
    last), as in vLLM."""
    chunk = {**base, "choices": choices}
    if include_usage:
        chunk["usage"] = usage
    return b"data: " + orjson.dumps(chunk) + b"\n\n"


def stream_choice(text: str, finish: str | None, *, chat: bool, first: bool) -> dict[str, Any]:
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


def embedding_inputs(req: dict[str, Any]) -> list[str]:
    """``input`` as texts: a string, strings, token ids or lists of token ids."""
    raw = req.get("input")
    if isinstance(raw, str):
        return [raw]
    if isinstance(raw, list) and raw and all(isinstance(x, str) for x in raw):
        return raw
    if isinstance(raw, list) and raw and all(isinstance(x, int) for x in raw):
        return [" ".join(map(str, raw))]
    if isinstance(raw, list) and raw and all(isinstance(x, list) for x in raw):
        return [" ".join(map(str, x)) for x in raw]
    raise HttpError(400, "input must be a string or a list", "invalid_value", "input")


def encoding_format(req: dict[str, Any]) -> str:
    fmt = req.get("encoding_format", "float")
    if fmt not in ("float", "base64"):
        raise HttpError(
            400, "encoding_format must be float or base64", "invalid_value", "encoding_format"
        )
    return str(fmt)


def embedding_item(index: int, vector: list[float], fmt: str) -> dict[str, Any]:
    value: list[float] | str = vector
    if fmt == "base64":
        value = base64.b64encode(struct.pack(f"<{len(vector)}f", *vector)).decode()
    return {"object": "embedding", "index": index, "embedding": value}


def embeddings_body(
    *, id_: str, model: str, data: list[dict[str, Any]], prompt_tokens: int
) -> bytes:
    return orjson.dumps(
        {
            "id": id_,
            "object": "list",
            "created": int(time.time()),
            "model": model,
            "data": data,
            "usage": {
                "prompt_tokens": prompt_tokens,
                "total_tokens": prompt_tokens,
                "completion_tokens": 0,
                "prompt_tokens_details": None,
            },
        }
    )


def models_body(*, served_model_name: str, model_id: str, max_model_len: int) -> bytes:
    """``GET /v1/models``: the one served model."""
    return orjson.dumps(
        {
            "object": "list",
            "data": [
                {
                    "id": served_model_name,
                    "object": "model",
                    "created": int(time.time()),
                    "owned_by": "vllm",
                    "root": model_id,
                    "parent": None,
                    "max_model_len": max_model_len,
                    "permission": [],
                }
            ],
        }
    )

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
from agent.mock_engine.sampling import Choice
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


def _bytes(token: str) -> list[int]:
    return list(token.encode())


def chat_logprobs(entries: list[tuple[str, float, list[tuple[str, float]]]]) -> dict[str, Any]:
    return {
        "content": [
            {
                "token": token,
                "logprob": lp,
                "bytes": _bytes(token),
                "top_logprobs": [{"token": t, "logprob": v, "bytes": _bytes(t)} for t, v in top],
            }
            for token, lp, top in entries
        ]
    }


def text_logprobs(
    entries: list[tuple[str, float, list[tuple[str, float]]]], offset: int = 0
) -> dict[str, Any]:
    offsets = []
    for token, _, _ in entries:
        offsets.append(offset)
        offset += len(token)
    return {
        "text_offset": offsets,
        "token_logprobs": [lp for _, lp, _ in entries],
        "tokens": [token for token, _, _ in entries],
        "top_logprobs": [dict(top) for _, _, top in entries],
    }


def tool_call(choice: Choice) -> dict[str, Any]:
    assert choice.tool_call is not None
    return {
        "id": choice.tool_call["id"],
        "type": "function",
        "function": {"name": choice.tool_call["name"], "arguments": choice.text},
    }


def completion_body(
    *,
    id_: str,
    model: str,
    chat: bool,
    choices: list[Choice],
    prompt_tokens: int,
    with_logprobs: bool,
) -> bytes:
    """A non-streamed chat completion or text completion with its choices."""
    out = []
    for c in choices:
        logprobs = None
        if with_logprobs:
            logprobs = chat_logprobs(c.logprobs) if chat else text_logprobs(c.logprobs)
        if chat:
            message: dict[str, Any] = {"role": "assistant", "content": c.text, "tool_calls": []}
            if c.tool_call is not None:
                message = {"role": "assistant", "content": None, "tool_calls": [tool_call(c)]}
            choice: dict[str, Any] = {"index": c.index, "message": message}
        else:
            choice = {"index": c.index, "text": c.text}
        choice.update(logprobs=logprobs, finish_reason=c.finish, stop_reason=c.stop_reason)
        out.append(choice)
    completion_tokens = sum(len(c.pieces) for c in choices)
    return orjson.dumps(
        {
            "id": id_,
            "object": "chat.completion" if chat else "text_completion",
            "created": int(time.time()),
            "model": model,
            "choices": out,
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


def stream_first(choice: Choice) -> dict[str, Any]:
    """A chat choice's first chunk: the role (and, for a tool call, its id and name)."""
    delta: dict[str, Any] = {"role": "assistant", "content": ""}
    if choice.tool_call is not None:
        delta = {
            "role": "assistant",
            "content": None,
            "tool_calls": [
                {
                    "index": 0,
                    "id": choice.tool_call["id"],
                    "type": "function",
                    "function": {"name": choice.tool_call["name"], "arguments": ""},
                }
            ],
        }
    return {"index": choice.index, "delta": delta, "logprobs": None, "finish_reason": None}


def stream_choice(
    choice: Choice, j: int, *, chat: bool, with_logprobs: bool, offset: int = 0
) -> dict[str, Any]:
    """The chunk of a choice's ``j``-th token (the last carries ``finish_reason``)."""
    piece = choice.pieces[j]
    finish = choice.finish if j == len(choice.pieces) - 1 else None
    entries = choice.logprobs[j : j + 1]
    logprobs = None
    if with_logprobs:
        logprobs = chat_logprobs(entries) if chat else text_logprobs(entries, offset)
    if chat:
        delta: dict[str, Any] = {"content": piece}
        if choice.tool_call is not None:
            delta = {"tool_calls": [{"index": 0, "function": {"arguments": piece}}]}
        return {
            "index": choice.index,
            "delta": delta,
            "logprobs": logprobs,
            "finish_reason": finish,
        }
    return {
        "index": choice.index,
        "text": piece,
        "logprobs": logprobs,
        "finish_reason": finish,
        "stop_reason": choice.stop_reason if finish else None,
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

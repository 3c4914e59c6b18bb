"""Reading and checking an inference request's body.

Guarantees: ``read_body`` never holds more than ``limit`` bytes: a declared ``Content-Length``
over the limit is refused before reading, a chunked body as soon as it passes it (413
``request_too_large``); a body not fully received within ``timeout_s`` is refused with 408
``request_timeout`` (a trickling client holds a connection for that long at most); a client
that leaves mid-body gets 400 ``client_disconnected``. ``parse_body`` parses once with orjson
and checks only ``model`` (a string of at most ``MAX_MODEL_NAME`` characters), ``stream``,
``stream_options``, ``max_tokens``/``max_completion_tokens`` (positive integers) and
``messages``/``prompt``/``input`` (400 ``invalid_json`` or ``invalid_value`` with ``param``);
``check_max_tokens`` bounds the token parameters by the model code's context. Everything else
goes to the engine as the client sent it. ``ask_for_usage`` makes a stream ask the engine for
usage whatever the client's ``stream_options`` say.
"""

from __future__ import annotations

import asyncio
from typing import Any

import orjson

from apps.gateway.errors import GatewayError
from apps.gateway.request import Receive
from apps.gateway.stream import INJECT_USAGE

# Model code names are slugs of at most 64 characters; anything much longer is not a name.
MAX_MODEL_NAME = 256
# How much of a client-supplied value an error message echoes.
_ECHO = 64
TOKEN_PARAMS = ("max_tokens", "max_completion_tokens", "max_output_tokens")


def too_large(limit: int) -> GatewayError:
    return GatewayError("request_too_large", f"Request body too large (limit {limit} bytes).")


def shown(value: str) -> str:
    """``value`` as an error message may echo it: at most ``_ECHO`` characters."""
    return value if len(value) <= _ECHO else value[:_ECHO] + "…"


async def read_body(
    receive: Receive, content_length: bytes | None, limit: int, timeout_s: float
) -> bytes:
    if content_length is not None:
        try:
            declared = int(content_length)
        except ValueError:
            raise GatewayError("invalid_request", "Invalid Content-Length.") from None
        if declared > limit:
            raise too_large(limit)
    try:
        async with asyncio.timeout(timeout_s):
            return await _read(receive, limit)
    except TimeoutError:
        raise GatewayError(
            "request_timeout", f"The request body was not received within {timeout_s:g}s."
        ) from None


async def _read(receive: Receive, limit: int) -> bytes:
    message = await receive()
    if message["type"] == "http.disconnect":
        raise GatewayError("client_disconnected", "Client disconnected.")
    body: bytes = message.get("body", b"")
    if not message.get("more_body", False):
        if len(body) > limit:
            raise too_large(limit)
        return body
    parts = [body]
    size = len(body)
    while message.get("more_body", False):
        message = await receive()
        if message["type"] == "http.disconnect":
            raise GatewayError("client_disconnected", "Client disconnected.")
        chunk = message.get("body", b"")
        size += len(chunk)
        if size > limit:
            raise too_large(limit)
        parts.append(chunk)
    return b"".join(parts)


def parse_body(body: bytes, endpoint: str) -> dict[str, Any]:
    try:
        data = orjson.loads(body)
    except orjson.JSONDecodeError:
        raise GatewayError("invalid_json", "The body is not valid JSON.") from None
    if not isinstance(data, dict):
        raise GatewayError("invalid_json", "The body must be a JSON object.")
    model = data.get("model")
    if not isinstance(model, str) or not model:
        raise GatewayError(
            "invalid_value", "`model` is required (a model code name).", param="model"
        )
    if len(model) > MAX_MODEL_NAME:
        raise GatewayError(
            "invalid_value",
            f"`model` is too long (at most {MAX_MODEL_NAME} characters).",
            param="model",
        )
    stream = data.get("stream", False)
    if stream is not None and not isinstance(stream, bool):
        raise GatewayError("invalid_value", "`stream` must be a boolean.", param="stream")
    if endpoint == "chat":
        messages = data.get("messages")
        if not isinstance(messages, list) or not messages:
            raise GatewayError(
                "invalid_value", "`messages` must be a non-empty list.", param="messages"
            )
    elif endpoint == "completions" and "prompt" not in data:
        raise GatewayError("invalid_value", "`prompt` is required.", param="prompt")
    elif endpoint in ("embeddings", "responses") and "input" not in data:
        raise GatewayError("invalid_value", "`input` is required.", param="input")
    options = data.get("stream_options")
    if options is not None and not isinstance(options, dict):
        raise GatewayError(
            "invalid_value", "`stream_options` must be an object.", param="stream_options"
        )
    for param in TOKEN_PARAMS:
        value = data.get(param)
        if value is not None and (isinstance(value, bool) or not isinstance(value, int)):
            raise GatewayError("invalid_value", f"`{param}` must be an integer.", param=param)
    return data


def check_max_tokens(data: dict[str, Any], context: int) -> None:
    """Refuse ``max_tokens``/``max_completion_tokens`` below 1 or above ``context`` (the model
    code's context length): no engine can generate more, and asking costs the engine memory."""
    for param in TOKEN_PARAMS:
        value = data.get(param)
        if value is None:
            continue
        if value < 1:
            raise GatewayError("invalid_value", f"`{param}` must be at least 1.", param=param)
        if value > context:
            raise GatewayError(
                "invalid_value",
                f"`{param}` is {shown(str(value))}; this model's context is {context} tokens.",
                param=param,
            )


def ask_for_usage(data: dict[str, Any], body: bytes) -> tuple[bytes, bool]:
    """For a stream: the body to send the engine, which always asks for usage, and whether the
    client asked for it (if not, the gateway strips it on the way back).

    A body with no ``stream_options`` key gets ``INJECT_USAGE`` spliced in (no re-encoding);
    one with the key, whatever its value (``null``, ``include_usage: false``, or a duplicate
    key: the parsed value is the one the engine would see), is re-encoded with
    ``include_usage: true``, so that no later key in the client's bytes can override ours.
    """
    options = data.get("stream_options")
    client_usage = isinstance(options, dict) and options.get("include_usage") is True
    if client_usage:
        return body, True
    if "stream_options" not in data:
        return INJECT_USAGE + body[body.index(b"{") + 1 :], False
    data["stream_options"] = {**(options or {}), "include_usage": True}
    return orjson.dumps(data), False


def prompt_prefix(data: dict[str, Any], limit: int) -> str:
    """The start of the prompt (at most ``limit`` characters), for prefix-aware routing.

    A content part whose ``text`` is not a string is refused (400 ``invalid_value``, param
    ``messages``), as the engine would refuse it."""
    prompt = data.get("prompt")
    if isinstance(prompt, str):
        return prompt[:limit]
    parts: list[str] = []
    size = 0
    for message in data.get("messages") or ():
        content = message.get("content") if isinstance(message, dict) else None
        if isinstance(content, list):
            texts = []
            for part in content:
                if not isinstance(part, dict) or "text" not in part:
                    continue
                text = part["text"]
                if not isinstance(text, str):
                    raise GatewayError(
                        "invalid_value",
                        "A content part's `text` must be a string.",
                        param="messages",
                    )
                texts.append(text)
            content = " ".join(texts)
        if isinstance(content, str):
            parts.append(content)
            size += len(content)
            if size >= limit:
                break
    return "\n".join(parts)[:limit]

"""Reading and checking an inference request's body.

Guarantees: ``read_body`` never holds more than ``limit`` bytes: a declared ``Content-Length``
over the limit is refused before reading, a chunked body as soon as it passes it (413
``request_too_large``); a client that leaves mid-body gets 400 ``client_disconnected``.
``parse_body`` parses once with orjson and checks only ``model``, ``stream``, ``stream_options``
and ``messages``/``prompt``/``input`` (400 ``invalid_json`` or ``invalid_value`` with ``param``);
everything else goes to the engine as the client sent it.
"""

from __future__ import annotations

from typing import Any

import orjson

from apps.gateway.errors import GatewayError
from apps.gateway.request import Receive


def too_large(limit: int) -> GatewayError:
    return GatewayError("request_too_large", f"Request body too large (limit {limit} bytes).")


async def read_body(receive: Receive, content_length: bytes | None, limit: int) -> bytes:
    if content_length is not None:
        try:
            declared = int(content_length)
        except ValueError:
            raise GatewayError("invalid_request", "Invalid Content-Length.") from None
        if declared > limit:
            raise too_large(limit)
    message = await receive()
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
    elif endpoint == "embeddings" and "input" not in data:
        raise GatewayError("invalid_value", "`input` is required.", param="input")
    options = data.get("stream_options")
    if options is not None and not isinstance(options, dict):
        raise GatewayError(
            "invalid_value", "`stream_options` must be an object.", param="stream_options"
        )
    return data


def prompt_prefix(data: dict[str, Any], limit: int) -> str:
    """The start of the prompt (at most ``limit`` characters), for prefix-aware routing."""
    prompt = data.get("prompt")
    if isinstance(prompt, str):
        return prompt[:limit]
    parts: list[str] = []
    size = 0
    for message in data.get("messages") or ():
        content = message.get("content") if isinstance(message, dict) else None
        if isinstance(content, list):
            content = " ".join(p.get("text", "") for p in content if isinstance(p, dict))
        if isinstance(content, str):
            parts.append(content)
            size += len(content)
            if size >= limit:
                break
    return "\n".join(parts)[:limit]

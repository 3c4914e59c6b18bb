"""The mock engine's sampling parameters and choices, as vLLM honours them (pure functions).

* ``n`` choices (1..``MAX_N``), each with its own words; the first choice of a request without
  ``seed`` is what the mock always answered (a function of the prompt only).
* ``seed``: the same seed and prompt give the same choices; another seed gives others.
* ``stop`` (a string or a list of strings): the text ends before the first stop string,
  ``finish_reason: stop`` and ``stop_reason`` the string; the token that held it is counted.
* ``logprobs``: chat ``logprobs: true`` with ``top_logprobs`` (0..``MAX_LOGPROBS``);
  completions ``logprobs: k``. Deterministic values, the sampled token first.
* ``response_format`` ``json_object`` / ``json_schema``: content that parses and follows the
  schema (objects, arrays, strings, numbers, integers, booleans, enums, ``const``).
* ``tools`` with ``tool_choice``: ``required`` or a named function always calls; ``auto`` (the
  default) calls when the last message is the user's (not a tool result); ``none`` never.
  Arguments follow the function's ``parameters`` schema; ``finish_reason: tool_calls``.

Tokens: for plain text one word is one token; structured content and tool-call arguments are
cut into ``PIECE``-character pieces, one token each (a stream sends one piece per chunk).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import orjson

from agent.mock_engine.asgi import HttpError
from agent.mock_engine.tokens import WORDS, seed_of, token_words

MAX_N = 16
MAX_LOGPROBS = 20
PIECE = 8


@dataclass(frozen=True)
class Params:
    n: int = 1
    seed: int | None = None
    stop: tuple[str, ...] = ()
    logprobs: int | None = None  # top alternatives per token; None: no logprobs
    response_format: dict[str, Any] | None = None
    tool: dict[str, Any] | None = None  # the function to call, when the choice calls one


@dataclass
class Choice:
    index: int
    pieces: list[str]  # the text (or arguments) as streamed, one token each
    finish: str = "length"
    stop_reason: str | None = None
    tool_call: dict[str, Any] | None = None  # {"id", "name"}; pieces are its arguments
    logprobs: list[tuple[str, float, list[tuple[str, float]]]] = field(default_factory=list)

    @property
    def text(self) -> str:
        return "".join(self.pieces)


def _int(req: dict[str, Any], key: str, low: int, high: int) -> int | None:
    value = req.get(key)
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int) or not low <= value <= high:
        raise HttpError(400, f"{key} must be an integer in [{low}, {high}]", "invalid_value", key)
    return int(value)


def params(req: dict[str, Any], *, chat: bool) -> Params:
    """The sampling parameters of a request; 400 ``invalid_value`` naming the field."""
    n = _int(req, "n", 1, MAX_N) or 1
    seed = req.get("seed")
    if seed is not None and (isinstance(seed, bool) or not isinstance(seed, int)):
        raise HttpError(400, "seed must be an integer", "invalid_value", "seed")
    raw_stop = req.get("stop")
    if raw_stop is None:
        stop: tuple[str, ...] = ()
    elif isinstance(raw_stop, str):
        stop = (raw_stop,) if raw_stop else ()
    elif isinstance(raw_stop, list) and all(isinstance(s, str) for s in raw_stop):
        stop = tuple(s for s in raw_stop if s)
    else:
        raise HttpError(400, "stop must be a string or a list of strings", "invalid_value", "stop")
    if chat:
        flag = req.get("logprobs")
        if flag is not None and not isinstance(flag, bool):
            raise HttpError(400, "logprobs must be a boolean", "invalid_value", "logprobs")
        top = _int(req, "top_logprobs", 0, MAX_LOGPROBS)
        if top and not flag:
            raise HttpError(
                400,
                "when using `top_logprobs`, `logprobs` must be set to true.",
                "invalid_value",
                "top_logprobs",
            )
        logprobs = (top or 0) if flag else None
    else:
        logprobs = _int(req, "logprobs", 0, MAX_LOGPROBS)
    fmt = req.get("response_format")
    if fmt is not None:
        kind = fmt.get("type") if isinstance(fmt, dict) else None
        if kind not in ("text", "json_object", "json_schema"):
            raise HttpError(
                400,
                "response_format.type must be text, json_object or json_schema",
                "invalid_value",
                "response_format",
            )
        fmt = None if kind == "text" else fmt
    return Params(
        n=n,
        seed=seed,
        stop=stop,
        logprobs=logprobs,
        response_format=fmt,
        tool=_tool(req) if chat else None,
    )


def _tool(req: dict[str, Any]) -> dict[str, Any] | None:
    tools = req.get("tools")
    if tools is None:
        return None
    functions = (
        [
            t["function"]
            for t in tools
            if isinstance(t, dict) and isinstance(t.get("function"), dict)
        ]
        if isinstance(tools, list)
        else []
    )
    if not isinstance(tools, list) or not functions or len(functions) != len(tools):
        raise HttpError(400, "tools must be a list of functions", "invalid_value", "tools")
    choice = req.get("tool_choice", "auto")
    if choice == "none":
        return None
    if isinstance(choice, dict):
        name = (choice.get("function") or {}).get("name")
        for f in functions:
            if f.get("name") == name:
                return dict(f)
        raise HttpError(400, f"tool_choice names no tool: {name}", "invalid_value", "tool_choice")
    if choice == "required":
        return dict(functions[0])
    if choice != "auto":
        raise HttpError(400, "tool_choice is invalid", "invalid_value", "tool_choice")
    messages = req.get("messages") or []
    last = messages[-1] if messages and isinstance(messages[-1], dict) else {}
    return dict(functions[0]) if last.get("role") == "user" else None


def from_schema(schema: Any, words: list[str], depth: int = 0) -> Any:
    """A value following a JSON schema (the common keywords), built from ``words``."""
    word = words[depth % len(words)].strip() if words else "tok0"
    if not isinstance(schema, dict):
        return word
    if "const" in schema:
        return schema["const"]
    if isinstance(schema.get("enum"), list) and schema["enum"]:
        return schema["enum"][0]
    for key in ("anyOf", "oneOf", "allOf"):
        if isinstance(schema.get(key), list) and schema[key]:
            return from_schema(schema[key][0], words, depth)
    kind = schema.get("type")
    if isinstance(kind, list):
        kind = next((k for k in kind if k != "null"), "null")
    if kind == "object" or (kind is None and "properties" in schema):
        props = schema.get("properties") or {}
        return {
            name: from_schema(sub, words, depth + i + 1)
            for i, (name, sub) in enumerate(props.items())
        }
    if kind == "array":
        return [from_schema(schema.get("items", {}), words, depth + 1)]
    if kind == "integer":
        return int(word[3:] or 0) if word.startswith("tok") else depth
    if kind == "number":
        return (int(word[3:] or 0) if word.startswith("tok") else depth) / 10
    if kind == "boolean":
        return depth % 2 == 0
    if kind == "null":
        return None
    return word


def _pieces(text: str) -> list[str]:
    return [text[i : i + PIECE] for i in range(0, len(text), PIECE)] or [""]


def _logprob(seed: int, j: int) -> float:
    return -round(((seed + 17 * j) % 997) / 400 + 0.001, 4)


def choices(p: Params, prompt_text: str, max_tokens: int, id_prefix: str) -> list[Choice]:
    """The ``n`` choices of one request."""
    base = seed_of(prompt_text if p.seed is None else f"{p.seed}\x00{prompt_text}")
    out = []
    for index in range(p.n):
        seed = base + 7919 * index
        words = token_words(seed, max_tokens)
        if p.tool is not None:
            args = orjson.dumps(from_schema(p.tool.get("parameters") or {}, words)).decode()
            choice = Choice(
                index,
                _pieces(args),
                finish="tool_calls",
                tool_call={"id": f"{id_prefix}-tool-{index}", "name": str(p.tool.get("name"))},
            )
        elif p.response_format is not None:
            schema: Any = {"type": "object", "properties": {"text": {"type": "string"}}}
            if p.response_format.get("type") == "json_schema":
                schema = (p.response_format.get("json_schema") or {}).get("schema", schema)
            content = orjson.dumps(from_schema(schema, words)).decode()
            choice = Choice(index, _pieces(content), finish="stop")
        else:
            choice = _text_choice(index, words, p.stop)
        if p.logprobs is not None:
            for j, piece in enumerate(choice.pieces):
                lp = _logprob(seed, j)
                top = [(piece, lp)] + [
                    (WORDS[(seed + 13 * (j + m)) % len(WORDS)], round(lp - 0.5 * m, 4))
                    for m in range(1, p.logprobs)
                ]
                choice.logprobs.append((piece, lp, top[: p.logprobs]))
        out.append(choice)
    return out


def _text_choice(index: int, words: list[str], stop: tuple[str, ...]) -> Choice:
    text = ""
    pieces: list[str] = []
    for word in words:
        start = max(0, len(text) - max((len(s) for s in stop), default=0))
        text += word
        hits = [(text.find(s, start), s) for s in stop if text.find(s, start) >= 0]
        if hits:
            at, found = min(hits)
            pieces.append(word[: max(0, at - (len(text) - len(word)))])
            return Choice(index, pieces, finish="stop", stop_reason=found)
        pieces.append(word)
    return Choice(index, pieces)

"""The Responses API (``POST /v1/responses``) onto chat completions and back, pure functions.

Shared by the mock engine, which serves ``/v1/responses`` as vLLM does, and the gateway, which
translates for engines that do not serve it (no Django here: the agent imports neither).

Request (``to_chat``): ``input`` (a string, or items: messages with ``input_text`` /
``output_text`` / ``input_image`` parts, ``function_call`` and ``function_call_output``),
``instructions`` (a system message first), function ``tools`` and ``tool_choice``,
``text.format`` (``json_object`` / ``json_schema`` as ``response_format``),
``max_output_tokens``, ``temperature``, ``top_p``, ``seed``, ``parallel_tool_calls``, ``user``,
``stream``. Other tools (web search, file search...) are refused (``ResponsesError``).
Stateless: ``previous_response_id`` is refused by the caller; ``store`` is answered ``false``.

Answer (``to_response``): one ``message`` item with an ``output_text`` part and a
``function_call`` item per tool call; usage as ``input_tokens`` / ``output_tokens``; a
completion cut by its token limit is ``status: incomplete`` with ``max_output_tokens``.
Streams (``StreamTranslator``): the Responses event format (``response.created``,
``response.output_item.added``, ``response.output_text.delta``,
``response.function_call_arguments.delta``, the ``.done`` events, ``response.completed`` with
the usage), each with its ``sequence_number``.
"""

from __future__ import annotations

import secrets
import time
from typing import Any

import orjson

_ROLES = {"user": "user", "system": "system", "developer": "system", "assistant": "assistant"}


class ResponsesError(ValueError):
    """A Responses request that cannot be served; ``param`` names the field."""

    def __init__(self, message: str, param: str) -> None:
        super().__init__(message)
        self.param = param


def _part(part: Any) -> dict[str, Any]:
    if isinstance(part, dict):
        kind = part.get("type")
        if kind in ("input_text", "output_text", "text") and isinstance(part.get("text"), str):
            return {"type": "text", "text": part["text"]}
        if kind == "input_image" and isinstance(part.get("image_url"), str):
            return {"type": "image_url", "image_url": {"url": part["image_url"]}}
    raise ResponsesError("An input content part must be input_text or input_image.", "input")


def _messages(items: Any) -> list[dict[str, Any]]:
    if isinstance(items, str):
        return [{"role": "user", "content": items}]
    if not isinstance(items, list) or not items:
        raise ResponsesError("`input` must be a string or a non-empty list of items.", "input")
    out: list[dict[str, Any]] = []
    for item in items:
        if not isinstance(item, dict):
            raise ResponsesError("Each `input` item must be an object.", "input")
        kind = item.get("type", "message")
        if kind == "message" and item.get("role") in _ROLES:
            content = item.get("content")
            if isinstance(content, list):
                content = [_part(p) for p in content]
            elif not isinstance(content, str):
                raise ResponsesError("A message's content must be text or parts.", "input")
            out.append({"role": _ROLES[item["role"]], "content": content})
        elif kind == "function_call":
            call = {
                "id": str(item.get("call_id") or item.get("id") or ""),
                "type": "function",
                "function": {
                    "name": str(item.get("name") or ""),
                    "arguments": str(item.get("arguments") or ""),
                },
            }
            last = out[-1] if out else None
            if last is not None and last["role"] == "assistant" and last.get("tool_calls"):
                last["tool_calls"].append(call)
            else:
                out.append({"role": "assistant", "content": None, "tool_calls": [call]})
        elif kind == "function_call_output":
            output = item.get("output")
            out.append(
                {
                    "role": "tool",
                    "tool_call_id": str(item.get("call_id") or ""),
                    "content": output if isinstance(output, str) else orjson.dumps(output).decode(),
                }
            )
        elif kind == "reasoning":
            continue
        else:
            raise ResponsesError(f"Unsupported input item type: {str(kind)[:64]}.", "input")
    return out


def _tools(tools: Any) -> list[dict[str, Any]]:
    if not isinstance(tools, list):
        raise ResponsesError("`tools` must be a list.", "tools")
    out = []
    for tool in tools:
        if not isinstance(tool, dict) or tool.get("type") != "function" or not tool.get("name"):
            raise ResponsesError("Only function tools are supported.", "tools")
        function = {
            k: tool[k] for k in ("name", "description", "parameters", "strict") if k in tool
        }
        out.append({"type": "function", "function": function})
    return out


def to_chat(data: dict[str, Any]) -> dict[str, Any]:
    """The chat completions request a Responses request amounts to."""
    messages = _messages(data.get("input"))
    instructions = data.get("instructions")
    if isinstance(instructions, str) and instructions:
        messages.insert(0, {"role": "system", "content": instructions})
    chat: dict[str, Any] = {"model": data["model"], "messages": messages}
    if data.get("tools"):
        chat["tools"] = _tools(data["tools"])
    choice = data.get("tool_choice")
    if isinstance(choice, dict):
        if choice.get("type") != "function" or not choice.get("name"):
            raise ResponsesError("`tool_choice` must name a function.", "tool_choice")
        chat["tool_choice"] = {"type": "function", "function": {"name": choice["name"]}}
    elif choice is not None:
        chat["tool_choice"] = choice
    fmt = (data.get("text") or {}).get("format") if isinstance(data.get("text"), dict) else None
    if isinstance(fmt, dict) and fmt.get("type") == "json_object":
        chat["response_format"] = {"type": "json_object"}
    elif isinstance(fmt, dict) and fmt.get("type") == "json_schema":
        schema = {k: fmt[k] for k in ("name", "schema", "strict", "description") if k in fmt}
        chat["response_format"] = {"type": "json_schema", "json_schema": schema}
    if data.get("max_output_tokens") is not None:
        chat["max_tokens"] = data["max_output_tokens"]
    for key in ("temperature", "top_p", "seed", "parallel_tool_calls", "user"):
        if data.get(key) is not None:
            chat[key] = data[key]
    if data.get("stream") is True:
        chat["stream"] = True
        chat["stream_options"] = {"include_usage": True}
    return chat


def new_id(prefix: str) -> str:
    return f"{prefix}_{secrets.token_hex(12)}"


def usage(input_tokens: int, output_tokens: int) -> dict[str, Any]:
    return {
        "input_tokens": input_tokens,
        "input_tokens_details": {"cached_tokens": 0},
        "output_tokens": output_tokens,
        "output_tokens_details": {"reasoning_tokens": 0},
        "total_tokens": input_tokens + output_tokens,
    }


def base(data: dict[str, Any], id_: str | None = None) -> dict[str, Any]:
    """The fields of a Response object that echo the request."""
    fmt = (data.get("text") or {}).get("format") if isinstance(data.get("text"), dict) else None
    return {
        "id": id_ or new_id("resp"),
        "object": "response",
        "created_at": int(time.time()),
        "status": "in_progress",
        "error": None,
        "incomplete_details": None,
        "instructions": data.get("instructions"),
        "max_output_tokens": data.get("max_output_tokens"),
        "model": data.get("model"),
        "output": [],
        "parallel_tool_calls": data.get("parallel_tool_calls", True),
        "previous_response_id": None,
        "store": False,
        "temperature": data.get("temperature"),
        "text": {"format": fmt or {"type": "text"}},
        "tool_choice": data.get("tool_choice", "auto"),
        "tools": data.get("tools") or [],
        "top_p": data.get("top_p"),
        "metadata": data.get("metadata") or {},
        "usage": None,
    }


def _message_item(text: str, status: str = "completed") -> dict[str, Any]:
    content = [{"type": "output_text", "text": text, "annotations": [], "logprobs": []}]
    return {
        "type": "message",
        "id": new_id("msg"),
        "status": status,
        "role": "assistant",
        "content": content,
    }


def _call_item(
    call_id: str, name: str, arguments: str, status: str = "completed"
) -> dict[str, Any]:
    return {
        "type": "function_call",
        "id": new_id("fc"),
        "call_id": call_id,
        "name": name,
        "arguments": arguments,
        "status": status,
    }


def _finish(resp: dict[str, Any], finish: str | None, prompt: int, completion: int) -> None:
    resp["usage"] = usage(prompt, completion)
    if finish == "length":
        resp["status"] = "incomplete"
        resp["incomplete_details"] = {"reason": "max_output_tokens"}
    else:
        resp["status"] = "completed"


def to_response(data: dict[str, Any], chat: dict[str, Any]) -> dict[str, Any]:
    """The Response object for a request (``data``) and its chat completion (``chat``)."""
    resp = base(data)
    choice = (chat.get("choices") or [{}])[0]
    message = choice.get("message") or {}
    if message.get("content"):
        resp["output"].append(_message_item(message["content"]))
    for call in message.get("tool_calls") or []:
        function = call.get("function") or {}
        resp["output"].append(
            _call_item(call.get("id", ""), function.get("name", ""), function.get("arguments", ""))
        )
    u = chat.get("usage") or {}
    _finish(
        resp,
        choice.get("finish_reason"),
        int(u.get("prompt_tokens") or 0),
        int(u.get("completion_tokens") or 0),
    )
    return resp


def sse(event: dict[str, Any]) -> bytes:
    kind = str(event["type"]).encode()
    return b"event: " + kind + b"\ndata: " + orjson.dumps(event) + b"\n\n"


class StreamTranslator:
    """Chat completion chunks in, Responses stream events out (choice 0)."""

    def __init__(self, data: dict[str, Any]) -> None:
        self.response = base(data)
        self.seq = 0
        self.text: str | None = None  # the open message's text so far
        self.message: dict[str, Any] | None = None
        self.calls: dict[int, dict[str, Any]] = {}  # tool call index -> open item
        self.finish: str | None = None
        self.prompt_tokens = self.completion_tokens = 0
        self.got_usage = False
        self.deltas = 0  # delta events sent (a token each, when no usage came)

    def _event(self, kind: str, **fields: Any) -> dict[str, Any]:
        event = {"type": kind, "sequence_number": self.seq, **fields}
        self.seq += 1
        return event

    def start(self) -> list[dict[str, Any]]:
        snapshot = {**self.response, "output": []}
        return [
            self._event("response.created", response=snapshot),
            self._event("response.in_progress", response=snapshot),
        ]

    def _index(self, item: dict[str, Any]) -> int:
        return int(self.response["output"].index(item))

    def feed(self, chunk: dict[str, Any]) -> list[dict[str, Any]]:
        events: list[dict[str, Any]] = []
        u = chunk.get("usage")
        if isinstance(u, dict):
            self.prompt_tokens = int(u.get("prompt_tokens") or 0)
            self.completion_tokens = int(u.get("completion_tokens") or 0)
            self.got_usage = True
        for choice in chunk.get("choices") or []:
            if choice.get("index", 0) != 0:
                continue
            delta = choice.get("delta") or {}
            content = delta.get("content")
            if content:
                if self.message is None:
                    self.message = _message_item("", "in_progress")
                    self.message["content"] = []
                    self.text = ""
                    self.response["output"].append(self.message)
                    index = self._index(self.message)
                    events.append(
                        self._event(
                            "response.output_item.added", output_index=index, item=self.message
                        )
                    )
                    part = {"type": "output_text", "text": "", "annotations": [], "logprobs": []}
                    events.append(
                        self._event(
                            "response.content_part.added",
                            item_id=self.message["id"],
                            output_index=index,
                            content_index=0,
                            part=part,
                        )
                    )
                self.text = (self.text or "") + content
                events.append(
                    self._event(
                        "response.output_text.delta",
                        item_id=self.message["id"],
                        output_index=self._index(self.message),
                        content_index=0,
                        delta=content,
                        logprobs=[],
                    )
                )
                self.deltas += 1
            for call in delta.get("tool_calls") or []:
                events.extend(self._call_delta(call))
            if choice.get("finish_reason"):
                self.finish = choice["finish_reason"]
        return events

    def _call_delta(self, call: dict[str, Any]) -> list[dict[str, Any]]:
        events = []
        index = int(call.get("index", 0))
        function = call.get("function") or {}
        item = self.calls.get(index)
        if item is None:
            item = _call_item(
                str(call.get("id") or ""), function.get("name") or "", "", "in_progress"
            )
            self.calls[index] = item
            self.response["output"].append(item)
            events.append(
                self._event(
                    "response.output_item.added", output_index=self._index(item), item=dict(item)
                )
            )
        piece = function.get("arguments") or ""
        if piece:
            item["arguments"] += piece
            events.append(
                self._event(
                    "response.function_call_arguments.delta",
                    item_id=item["id"],
                    output_index=self._index(item),
                    delta=piece,
                )
            )
            self.deltas += 1
        return events

    def end(self) -> list[dict[str, Any]]:
        """The ``.done`` events and ``response.completed`` with the usage."""
        events = []
        if self.message is not None:
            index = self._index(self.message)
            part: dict[str, Any] = {
                "type": "output_text",
                "text": self.text,
                "annotations": [],
                "logprobs": [],
            }
            events.append(
                self._event(
                    "response.output_text.done",
                    item_id=self.message["id"],
                    output_index=index,
                    content_index=0,
                    text=self.text,
                    logprobs=[],
                )
            )
            events.append(
                self._event(
                    "response.content_part.done",
                    item_id=self.message["id"],
                    output_index=index,
                    content_index=0,
                    part=part,
                )
            )
            self.message["content"] = [part]
            self.message["status"] = "completed"
            events.append(
                self._event("response.output_item.done", output_index=index, item=self.message)
            )
        for item in self.calls.values():
            index = self._index(item)
            events.append(
                self._event(
                    "response.function_call_arguments.done",
                    item_id=item["id"],
                    output_index=index,
                    name=item["name"],
                    arguments=item["arguments"],
                )
            )
            item["status"] = "completed"
            events.append(self._event("response.output_item.done", output_index=index, item=item))
        completion = self.completion_tokens if self.got_usage else self.deltas
        _finish(self.response, self.finish, self.prompt_tokens, completion)
        events.append(self._event("response.completed", response=self.response))
        return events

    def error(self, code: str, message: str) -> list[dict[str, Any]]:
        return [self._event("error", code=code, message=message, param=None)]

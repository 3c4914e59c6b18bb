"""``POST /v1/responses``: passed through to engines that serve it, else translated onto chat.

Authenticated, routed, rate-limited and metered like chat (``apps.gateway.app``); this module
prepares the engine call and adapts the answer:

* ``previous_response_id`` is refused (400 ``previous_response_not_supported``): the gateway
  keeps no conversation state; ``store`` is forced to ``false`` on the way to the engine (a
  response stored by one instance could not be found through another) and answered ``false``.
* An engine that serves the Responses API (``apps.gateway.capabilities``: vLLM, the mock
  engine) gets the request as sent (``store: false``); its usage (``input_tokens`` /
  ``output_tokens``, in ``response.completed`` for a stream) is taken into the request before
  the last bytes leave, through ``AccountedSend`` as for chat. A stream's progress is counted
  one token per delta event until the usage arrives.
* Any other engine gets the chat completions request it amounts to
  (``agent.mock_engine.responses.to_chat``): the answer is rebuilt as a Response object, a
  stream as Responses events (``StreamTranslator``); usage is the chat answer's, exactly as
  for a chat request (streams and disconnects included).
"""

from __future__ import annotations

from typing import Any

import orjson

from agent.mock_engine.responses import ResponsesError, StreamTranslator, sse, to_chat, to_response
from apps.gateway.capabilities import serves
from apps.gateway.errors import GatewayError
from apps.gateway.request import Message, Request, Send

CHAT_PATH = "/v1/chat/completions"
RESPONSES_PATH = "/v1/responses"


def prepare(data: dict[str, Any], engine: str) -> tuple[str, bytes, bool]:
    """The engine path, the body to send it, and whether the answer must be translated."""
    if data.get("previous_response_id") is not None:
        raise GatewayError(
            "previous_response_not_supported",
            "This gateway is stateless: `previous_response_id` is not supported; send the "
            "conversation so far in `input`.",
            param="previous_response_id",
        )
    if serves(engine, "responses"):
        data["store"] = False
        return RESPONSES_PATH, orjson.dumps(data), False
    try:
        chat = to_chat(data)
    except ResponsesError as exc:
        raise GatewayError("invalid_value", str(exc), param=exc.param) from None
    return CHAT_PATH, orjson.dumps(chat), True


def _content_length(headers: list[tuple[bytes, bytes]], size: int) -> list[tuple[bytes, bytes]]:
    kept = [(k, v) for k, v in headers if k.lower() != b"content-length"]
    return [*kept, (b"content-length", str(size).encode())]


class ResponsesSend:
    """Between the proxy and ``AccountedSend``: adapts the engine's answer to the Responses
    API and keeps the request's usage true before each message goes on."""

    def __init__(self, send: Send, req: Request, data: dict[str, Any], translate: bool) -> None:
        self.send, self.req, self.data, self.translate = send, req, data, translate
        self.start: Message | None = None
        self.status = 200
        self.sse = False
        self.buffer = b""
        self.parts: list[bytes] = []
        self.out = StreamTranslator(data) if translate else None
        self.started = False  # translated stream: response.created sent
        self.failed = False
        self.deltas = 0  # native stream: delta events seen
        self.usage: tuple[int, int] | None = None

    async def __call__(self, message: Message) -> None:
        if message["type"] == "http.response.start":
            self.status = message["status"]
            headers = list(message.get("headers") or [])
            self.sse = any(
                k.lower() == b"content-type" and v.startswith(b"text/event-stream")
                for k, v in headers
            )
            if self.sse:
                await self.send(message)
            else:
                self.start = {**message, "headers": headers}
            return
        if message["type"] != "http.response.body":
            await self.send(message)
            return
        if self.sse:
            await self._stream(message)
        else:
            await self._plain(message)

    async def _plain(self, message: Message) -> None:
        self.parts.append(message.get("body", b""))
        if message.get("more_body", False):
            return
        body = b"".join(self.parts)
        if self.status == 200:
            try:
                payload = orjson.loads(body)
            except orjson.JSONDecodeError:
                payload = None
            if isinstance(payload, dict) and self.translate:
                body = orjson.dumps(to_response(self.data, payload))
            elif isinstance(payload, dict):
                self._take(payload.get("usage"))
                self._account()
        assert self.start is not None
        start = {**self.start, "headers": _content_length(self.start["headers"], len(body))}
        await self.send(start)
        await self.send({"type": "http.response.body", "body": body, "more_body": False})

    def _take(self, usage: Any) -> None:
        if isinstance(usage, dict):
            self.usage = (int(usage.get("input_tokens") or 0), int(usage.get("output_tokens") or 0))

    def _account(self) -> None:
        """A native stream's usage: exact once ``response.completed`` came, else the deltas."""
        if self.translate:
            return
        if self.usage is not None:
            self.req.prompt_tokens, self.req.completion_tokens = self.usage
        else:
            self.req.completion_tokens = self.deltas

    async def _stream(self, message: Message) -> None:
        self.buffer += message.get("body", b"")
        more = message.get("more_body", False)
        end = self.buffer.rfind(b"\n\n")
        chunk = b""
        if end >= 0:
            events, self.buffer = self.buffer[: end + 2], self.buffer[end + 2 :]
            chunk = self._translate(events) if self.translate else self._scan(events)
        if not more and self.out is not None and not self.failed:
            if not self.started:
                chunk = b"".join(sse(e) for e in self.out.start()) + chunk
                self.started = True
            chunk += b"".join(sse(e) for e in self.out.end())
        self._account()
        if chunk or not more:
            await self.send({"type": "http.response.body", "body": chunk, "more_body": more})

    def _scan(self, events: bytes) -> bytes:
        for event in events.split(b"\n\n"):
            if b'"type":"response.output_text.delta"' in event or (
                b'"type":"response.function_call_arguments.delta"' in event
            ):
                self.deltas += 1
            elif (
                b'"type":"response.completed"' in event or b'"type":"response.incomplete"' in event
            ):
                data = event[event.find(b"data: ") + 6 :] if b"data: " in event else b""
                try:
                    parsed = orjson.loads(data)
                except orjson.JSONDecodeError:
                    continue
                if isinstance(parsed, dict):
                    self._take((parsed.get("response") or {}).get("usage"))
        return events

    def _translate(self, events: bytes) -> bytes:
        assert self.out is not None
        out: list[dict[str, Any]] = []
        if not self.started:
            out.extend(self.out.start())
            self.started = True
        for event in events.split(b"\n\n"):
            if not event.startswith(b"data: ") or event == b"data: [DONE]":
                continue
            try:
                chunk = orjson.loads(event[6:])
            except orjson.JSONDecodeError:
                continue
            if not isinstance(chunk, dict):
                continue
            error = chunk.get("error")
            if isinstance(error, dict):
                self.failed = True
                out.extend(self.out.error(str(error.get("code")), str(error.get("message"))))
                continue
            out.extend(self.out.feed(chunk))
        return b"".join(sse(e) for e in out)


def prefix_view(data: dict[str, Any]) -> dict[str, Any]:
    """What prefix-aware routing hashes for a Responses request: its chat messages (the
    instructions first), so that conversations sharing a start share an instance."""
    try:
        return {"messages": to_chat(data)["messages"]}
    except (ResponsesError, KeyError):
        return {}

"""What the gateway passes through untouched, as vLLM answers it (issue 17): ``n`` choices,
``logprobs``/``top_logprobs``, ``stop``, ``seed``, tool calls and structured output, through
real gateway and mock-engine processes with the official ``openai`` SDK; usage exact each time.
"""

from __future__ import annotations

import json

import openai
import pytest

from tests.gateway.conftest import flushed_usage

HELLO = [{"role": "user", "content": "hello there"}]
WEATHER = {
    "type": "function",
    "function": {
        "name": "get_weather",
        "parameters": {
            "type": "object",
            "properties": {"city": {"type": "string"}, "days": {"type": "integer"}},
            "required": ["city", "days"],
        },
    },
}


@pytest.fixture
def client(model_code, start_engine, start_gateway, new_key):
    start_engine(model_code)
    return start_gateway().client(new_key()[1])


def test_n_choices_streamed_or_not_with_exact_usage(client):
    # When the client asks for two choices, plainly and streamed
    reply = client.chat.completions.create(model="sales-bot", messages=HELLO, max_tokens=4, n=2)
    chunks = list(
        client.chat.completions.create(
            model="sales-bot",
            messages=HELLO,
            max_tokens=4,
            n=2,
            stream=True,
            stream_options={"include_usage": True},
        )
    )

    # Then there are two different choices, the same streamed, and usage counts both
    assert [c.index for c in reply.choices] == [0, 1]
    texts = [c.message.content for c in reply.choices]
    assert texts[0] != texts[1]
    streamed = ["", ""]
    for chunk in chunks:
        for choice in chunk.choices:
            streamed[choice.index] += choice.delta.content or ""
    assert streamed == texts
    assert reply.usage is not None and reply.usage.completion_tokens == 8
    assert chunks[-1].usage is not None and chunks[-1].usage.completion_tokens == 8
    records = flushed_usage(2)
    assert [(r.stream, r.prompt_tokens, r.completion_tokens) for r in records] == [
        (False, 3, 8),
        (True, 3, 8),
    ]


def test_logprobs_on_chat_and_completions(client):
    chat = client.chat.completions.create(
        model="sales-bot", messages=HELLO, max_tokens=3, logprobs=True, top_logprobs=2
    )
    chunks = list(
        client.chat.completions.create(
            model="sales-bot",
            messages=HELLO,
            max_tokens=3,
            logprobs=True,
            top_logprobs=2,
            stream=True,
        )
    )
    text = client.completions.create(model="sales-bot", prompt="once", max_tokens=3, logprobs=2)
    plain = client.chat.completions.create(model="sales-bot", messages=HELLO, max_tokens=3)

    content = chat.choices[0].logprobs.content
    assert "".join(e.token for e in content) == chat.choices[0].message.content
    assert all(e.logprob < 0 and len(e.top_logprobs) == 2 for e in content)
    assert all(e.top_logprobs[0].token == e.token for e in content)
    streamed = [
        e
        for c in chunks
        if c.choices and c.choices[0].logprobs
        for e in c.choices[0].logprobs.content
    ]
    assert [(e.token, e.logprob) for e in streamed] == [(e.token, e.logprob) for e in content]
    lp = text.choices[0].logprobs
    assert lp is not None and "".join(lp.tokens) == text.choices[0].text
    assert len(lp.token_logprobs) == 3 and all(len(t) == 2 for t in lp.top_logprobs)
    assert lp.text_offset == [0, len(lp.tokens[0]), len(lp.tokens[0]) + len(lp.tokens[1])]
    assert plain.choices[0].logprobs is None


def test_top_logprobs_without_logprobs_is_the_engines_400(client):
    with pytest.raises(openai.BadRequestError) as caught:
        client.chat.completions.create(
            model="sales-bot", messages=HELLO, max_tokens=3, top_logprobs=2
        )
    assert caught.value.body["param"] == "top_logprobs"


def test_stop_ends_the_text_before_the_stop_string(client):
    full = client.chat.completions.create(model="sales-bot", messages=HELLO, max_tokens=6)
    words = full.choices[0].message.content.split()
    stop = words[2]  # the third token's text

    stopped = client.chat.completions.create(
        model="sales-bot", messages=HELLO, max_tokens=6, stop=[stop]
    )
    chunks = list(
        client.chat.completions.create(
            model="sales-bot", messages=HELLO, max_tokens=6, stop=stop, stream=True
        )
    )

    assert stopped.choices[0].message.content == " ".join(words[:2]) + " "
    assert stopped.choices[0].finish_reason == "stop"
    assert stopped.usage.completion_tokens == 3
    streamed = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert streamed == stopped.choices[0].message.content
    assert [c.choices[0].finish_reason for c in chunks if c.choices][-1] == "stop"
    records = flushed_usage(3)
    assert [r.completion_tokens for r in records] == [6, 3, 3]


def test_seed_makes_answers_reproducible(client):
    def ask(seed):
        reply = client.completions.create(model="sales-bot", prompt="p", max_tokens=5, seed=seed)
        return reply.choices[0].text

    assert ask(7) == ask(7)
    assert ask(7) != ask(8)


def test_tool_calls_streamed_or_not(client):
    reply = client.chat.completions.create(
        model="sales-bot", messages=HELLO, max_tokens=8, tools=[WEATHER]
    )
    chunks = list(
        client.chat.completions.create(
            model="sales-bot", messages=HELLO, max_tokens=8, tools=[WEATHER], stream=True
        )
    )

    call = reply.choices[0].message.tool_calls[0]
    assert reply.choices[0].finish_reason == "tool_calls"
    assert call.function.name == "get_weather"
    args = json.loads(call.function.arguments)
    assert isinstance(args["city"], str) and isinstance(args["days"], int)
    streamed = "".join(
        (c.choices[0].delta.tool_calls or [None])[0].function.arguments or ""
        for c in chunks
        if c.choices and c.choices[0].delta.tool_calls
    )
    assert streamed == call.function.arguments
    # A tool result answered: the model replies in text
    after = client.chat.completions.create(
        model="sales-bot",
        messages=[
            *HELLO,
            {"role": "assistant", "content": None, "tool_calls": [call.model_dump()]},
            {"role": "tool", "tool_call_id": call.id, "content": "sunny"},
        ],
        max_tokens=3,
        tools=[WEATHER],
    )
    assert after.choices[0].message.content and not after.choices[0].message.tool_calls


def test_json_schema_output_follows_the_schema(client):
    schema = {
        "type": "object",
        "properties": {"name": {"type": "string"}, "age": {"type": "integer"}},
        "required": ["name", "age"],
    }
    reply = client.chat.completions.create(
        model="sales-bot",
        messages=HELLO,
        max_tokens=8,
        response_format={"type": "json_schema", "json_schema": {"name": "p", "schema": schema}},
    )
    value = json.loads(reply.choices[0].message.content)
    assert isinstance(value["name"], str) and isinstance(value["age"], int)
    obj = client.chat.completions.create(
        model="sales-bot", messages=HELLO, max_tokens=8, response_format={"type": "json_object"}
    )
    assert isinstance(json.loads(obj.choices[0].message.content), dict)

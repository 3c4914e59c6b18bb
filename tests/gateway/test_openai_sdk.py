"""The official ``openai`` SDK against real gateway and mock-engine processes."""

from __future__ import annotations

import asyncio

import httpx
import orjson
from openai import AsyncOpenAI, OpenAI

from tests.gateway.conftest import flushed_usage, make_model_code

HELLO = [{"role": "user", "content": "hello there"}]


def test_it_answers_chat_completions_streamed_or_not(
    model_code, start_engine, start_gateway, new_key
):
    # Given a ready instance behind a gateway and a key
    start_engine(model_code)
    client = start_gateway().client(new_key()[1])

    # When the client asks without and with streaming
    reply = client.chat.completions.create(model="sales-bot", messages=HELLO, max_tokens=5)
    chunks = list(
        client.chat.completions.create(model="sales-bot", messages=HELLO, max_tokens=5, stream=True)
    )

    # Then both carry the same five tokens, and the stream has no usage chunk it did not ask for
    assert reply.usage is not None and reply.usage.completion_tokens == 5
    streamed = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert streamed == reply.choices[0].message.content
    assert all(c.choices for c in chunks)
    assert all(getattr(c, "usage", None) is None for c in chunks)
    # And both requests were recorded with their exact usage
    records = flushed_usage(2)
    assert [(r.stream, r.completion_tokens) for r in records] == [(False, 5), (True, 5)]
    assert records[0].prompt_tokens == records[1].prompt_tokens == 3


def test_it_passes_the_usage_chunk_through_when_the_client_asks(
    model_code, start_engine, start_gateway, new_key
):
    start_engine(model_code)
    client = start_gateway().client(new_key()[1])

    chunks = list(
        client.chat.completions.create(
            model="sales-bot",
            messages=HELLO,
            max_tokens=4,
            stream=True,
            stream_options={"include_usage": True},
        )
    )

    assert chunks[-1].choices == []
    assert chunks[-1].usage is not None and chunks[-1].usage.completion_tokens == 4


def test_it_serves_completions_embeddings_and_models(
    owner_org, model_code, start_engine, start_gateway, new_key
):
    # Given two model codes, one with a ready instance
    start_engine(model_code)
    make_model_code(owner_org, "idle-bot")
    client = start_gateway().client(new_key()[1])

    # When the client uses the other endpoints
    completion = client.completions.create(model="sales-bot", prompt="once upon", max_tokens=3)
    streamed = list(
        client.completions.create(model="sales-bot", prompt="once upon", max_tokens=3, stream=True)
    )
    embeddings = client.embeddings.create(model="sales-bot", input=["a b", "c"])
    models = client.models.list()

    # Then each answers as OpenAI does, and /models says which model codes have capacity
    assert completion.usage is not None and completion.usage.completion_tokens == 3
    assert "".join(c.choices[0].text for c in streamed) == completion.choices[0].text
    assert len(embeddings.data) == 2 and len(embeddings.data[0].embedding) == 8
    listed = {m.id: m.model_extra["ready"] for m in models.data}
    assert listed == {"idle-bot": False, "sales-bot": True}
    assert client.models.retrieve("sales-bot").id == "sales-bot"


def test_it_serves_async_clients(model_code, start_engine, start_gateway, new_key):
    start_engine(model_code)
    gateway = start_gateway()
    key = new_key()[1]

    async def run() -> tuple[list[str], list[str]]:
        client = AsyncOpenAI(base_url=f"{gateway.url}/v1", api_key=key, max_retries=0)
        replies = await asyncio.gather(
            *[
                client.chat.completions.create(
                    model="sales-bot", messages=[{"role": "user", "content": f"n{i}"}]
                )
                for i in range(10)
            ]
        )
        stream = await client.chat.completions.create(
            model="sales-bot", messages=HELLO, stream=True
        )
        parts = [c.choices[0].delta.content or "" async for c in stream if c.choices]
        await client.close()
        return [r.choices[0].message.content or "" for r in replies], parts

    contents, parts = asyncio.run(run())

    assert len(contents) == 10 and all(contents)
    assert len([p for p in parts if p]) == 8


def test_it_passes_fields_it_does_not_interpret_to_the_engine_unchanged(
    model_code, start_engine, start_gateway, new_key
):
    engine = start_engine(model_code)
    client = start_gateway().client(new_key()[1])
    tools = [{"type": "function", "function": {"name": "f", "parameters": {"type": "object"}}}]

    client.chat.completions.create(
        model="sales-bot",
        messages=HELLO,
        tools=tools,
        seed=7,
        logprobs=True,
        response_format={"type": "json_object"},
        extra_body={"top_k": 3, "guided_choice": ["a", "b"]},
    )

    seen = orjson.loads(
        httpx.get(
            f"{engine.url}/mock/last_request", headers={"Authorization": f"Bearer {engine.secret}"}
        ).content
    )
    assert seen["tools"] == tools
    assert (seen["seed"], seen["logprobs"], seen["top_k"]) == (7, True, 3)
    assert seen["response_format"] == {"type": "json_object"}
    assert seen["guided_choice"] == ["a", "b"]


def test_every_response_carries_a_request_id_and_the_gateway_overhead(
    model_code, start_engine, start_gateway, new_key
):
    start_engine(model_code)
    gateway = start_gateway()
    client = gateway.client(new_key()[1])

    ok = client.chat.completions.with_raw_response.create(model="sales-bot", messages=HELLO)
    refused = httpx.post(f"{gateway.url}/v1/chat/completions", json={})

    for response in (ok, refused):
        assert response.headers["x-request-id"].startswith("req_")
        assert float(response.headers["x-gateway-overhead-ms"]) >= 0
    assert ok.headers["x-request-id"] == flushed_usage(1)[0].request_id


def test_the_web_process_serves_the_gateway_at_v1(processes, model_code, start_engine, new_key):
    # Given the web process (which mounts the gateway at /v1)
    start_engine(model_code)
    _, url = processes.web()
    client = OpenAI(base_url=f"{url}/v1", api_key=new_key()[1], max_retries=0)

    # When a client calls it
    reply = client.chat.completions.create(model="sales-bot", messages=HELLO)

    # Then the gateway answers there too
    assert reply.choices[0].message.content

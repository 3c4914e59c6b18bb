"""``POST /v1/responses`` through real gateway and mock-engine processes with the official SDK
(``client.responses.create`` / ``client.responses.stream``), passed through to an engine that
serves it (the mock, as vLLM) and translated onto chat for one that does not (issue 17)."""

from __future__ import annotations

import json

import httpx
import openai
import orjson
import pytest

from tests.gateway.conftest import flushed_usage, make_model_code

WEATHER = {
    "type": "function",
    "name": "get_weather",
    "parameters": {
        "type": "object",
        "properties": {"city": {"type": "string"}},
        "required": ["city"],
    },
}


@pytest.fixture(params=["native", "translated"])
def setup(request, owner_org, start_engine, start_gateway, new_key):
    model = make_model_code(owner_org, "sales-bot")
    handle = start_engine(model)
    # Translated: the gateway is told the mock engine does not serve /v1/responses
    env = {"GATEWAY_RESPONSES_ENGINES": "vllm"} if request.param == "translated" else {}
    gateway = start_gateway(**env)
    key = new_key()[1]
    return request.param, handle, gateway.client(key)


def last_path_fields(handle):
    auth = {"Authorization": f"Bearer {handle.secret}"}
    return orjson.loads(httpx.get(f"{handle.url}/mock/last_request", headers=auth).content)


def test_create_and_stream_with_exact_usage(setup):
    mode, handle, client = setup

    # When the client creates a response, then streams one
    reply = client.responses.create(
        model="sales-bot", input="hello there", instructions="be brief", max_output_tokens=5
    )
    with client.responses.stream(
        model="sales-bot", input="hello there", instructions="be brief", max_output_tokens=5
    ) as stream:
        deltas = [e.delta for e in stream if e.type == "response.output_text.delta"]
        final = stream.get_final_response()

    # Then both carry the same text and usage, as the Responses API shapes them
    assert reply.object == "response" and reply.store is False
    assert reply.output_text and "".join(deltas) == reply.output_text == final.output_text
    assert reply.usage.output_tokens == final.usage.output_tokens == 5
    assert (
        reply.usage.input_tokens == final.usage.input_tokens == 6
    )  # two messages of two words, one more each
    assert reply.status == "incomplete" and reply.incomplete_details.reason == "max_output_tokens"
    # And the engine got what the mode says: the Responses request (store false) or chat
    sent = last_path_fields(handle)
    if mode == "native":
        assert sent["input"] == "hello there" and sent["store"] is False
    else:
        assert sent["messages"][0] == {"role": "system", "content": "be brief"}
        assert sent["stream_options"] == {"include_usage": True}
    # And each request has one exact usage record, endpoint responses
    records = flushed_usage(2)
    assert [(r.endpoint, r.stream, r.prompt_tokens, r.completion_tokens) for r in records] == [
        ("responses", False, 6, 5),
        ("responses", True, 6, 5),
    ]


def test_a_tool_call_round_trip_streamed_or_not(setup):
    _, _, client = setup
    first = client.responses.create(
        model="sales-bot", input="weather in Paris?", tools=[WEATHER], max_output_tokens=8
    )
    call = next(item for item in first.output if item.type == "function_call")
    assert call.name == "get_weather" and isinstance(json.loads(call.arguments)["city"], str)

    with client.responses.stream(
        model="sales-bot", input="weather in Paris?", tools=[WEATHER], max_output_tokens=8
    ) as stream:
        argument_deltas = [
            e.delta for e in stream if e.type == "response.function_call_arguments.delta"
        ]
        streamed = stream.get_final_response()
    streamed_call = next(item for item in streamed.output if item.type == "function_call")
    assert "".join(argument_deltas) == streamed_call.arguments == call.arguments

    # The tool's output sent back: the model answers in text
    second = client.responses.create(
        model="sales-bot",
        input=[
            {"role": "user", "content": "weather in Paris?"},
            {
                "type": "function_call",
                "call_id": call.call_id,
                "name": call.name,
                "arguments": call.arguments,
            },
            {"type": "function_call_output", "call_id": call.call_id, "output": "sunny"},
        ],
        tools=[WEATHER],
        max_output_tokens=3,
    )
    assert second.output_text and not [i for i in second.output if i.type == "function_call"]


def test_structured_output(setup):
    _, _, client = setup
    schema = {
        "type": "object",
        "properties": {"name": {"type": "string"}, "age": {"type": "integer"}},
        "required": ["name", "age"],
        "additionalProperties": False,
    }
    reply = client.responses.create(
        model="sales-bot",
        input="who?",
        text={"format": {"type": "json_schema", "name": "person", "schema": schema}},
    )
    value = json.loads(reply.output_text)
    assert isinstance(value["name"], str) and isinstance(value["age"], int)


def test_previous_response_id_is_refused_with_a_registered_code(setup):
    _, _, client = setup
    with pytest.raises(openai.BadRequestError) as caught:
        client.responses.create(model="sales-bot", input="hi", previous_response_id="resp_1")
    assert caught.value.code == "previous_response_not_supported"
    assert caught.value.body["param"] == "previous_response_id"
    with pytest.raises(openai.BadRequestError) as missing:
        client.responses.create(model="sales-bot", input=[])
    assert missing.value.body["param"] == "input"
    # Refusals are billed nothing
    records = flushed_usage(2)
    assert [(r.status_code, r.completion_tokens) for r in records] == [(400, 0), (400, 0)]


def test_rate_limits_apply_as_to_chat(owner_org, start_engine, start_gateway, new_key):
    start_engine(make_model_code(owner_org, "sales-bot"))
    client = start_gateway().client(new_key(rpm_limit=1)[1])
    client.responses.create(model="sales-bot", input="hi", max_output_tokens=2)
    with pytest.raises(openai.RateLimitError):
        client.responses.create(model="sales-bot", input="hi", max_output_tokens=2)


def test_prefix_aware_routing_hashes_the_conversation(
    owner_org, start_engine, start_gateway, new_key
):
    # Given a prefix-aware model code on two instances
    from apps.models.choices import RoutingPolicy

    model = make_model_code(owner_org, "sales-bot", routing_policy=RoutingPolicy.PREFIX_AWARE)
    engines = [start_engine(model), start_engine(model)]
    client = start_gateway().client(new_key()[1])

    def served_by() -> int:
        before = [e.generated()[1] for e in engines]
        client.responses.create(model="sales-bot", input=prompt, max_output_tokens=1)
        after = [e.generated()[1] for e in engines]
        return next(n for n in range(2) if after[n] > before[n])

    # When conversations with different starts arrive, each twice
    pairs = []
    for i in range(12):
        prompt = f"topic {i}: tell me more"
        pairs.append((served_by(), served_by()))

    # Then a conversation's repeat goes where it went first (the prefix is the conversation,
    # not empty), and different conversations spread over both instances
    assert all(a == b for a, b in pairs), pairs
    assert {a for a, _ in pairs} == {0, 1}

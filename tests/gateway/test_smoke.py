from __future__ import annotations

from tests.gateway.conftest import flushed_usage


def test_it_answers_a_chat_completion_through_the_gateway(
    model_code, start_engine, start_gateway, new_key
):
    start_engine(model_code)
    gateway = start_gateway()
    _, key = new_key()

    reply = gateway.client(key).chat.completions.create(
        model="sales-bot", messages=[{"role": "user", "content": "hello there"}]
    )

    assert reply.choices[0].message.content
    records = flushed_usage(1)
    assert records[0].completion_tokens == 8

"""Exact usage across many requests, revocation and rate limits across gateway processes."""

from __future__ import annotations

import time

import httpx
import openai
import pytest

from apps.gateway.services import api_key_revoke
from tests.gateway.conftest import flushed_usage
from tests.processes import wait_for


def test_recorded_usage_equals_what_the_engines_generated(
    model_code, start_engine, start_gateway, new_key
):
    # Given two engines, one of which fails a few requests (they are retried elsewhere)
    engines = [
        start_engine(model_code, token_rate=400.0),
        start_engine(model_code, token_rate=400.0),
    ]
    client = start_gateway().client(new_key()[1])
    engines[0].control(fail_next=3, fail_status=500)

    # When clients send plain, streamed and abandoned requests of varied sizes
    sent = 0
    for i in range(12):
        messages = [{"role": "user", "content": "word " * (i + 1)}]
        client.chat.completions.create(model="sales-bot", messages=messages, max_tokens=i + 1)
        chunks = client.chat.completions.create(
            model="sales-bot", messages=messages, max_tokens=i + 2, stream=True
        )
        list(chunks)
        abandoned = client.chat.completions.create(
            model="sales-bot", messages=messages, max_tokens=20, stream=True
        )
        next(iter(abandoned))
        abandoned.close()  # the client leaves after the first chunk
        client.completions.create(model="sales-bot", prompt="p " * i + "q", max_tokens=3)
        client.embeddings.create(model="sales-bot", input="x " * (i + 1))
        sent += 5

    # Then every request has one record, and the token sums match the engines' own counters
    records = flushed_usage(sent)
    assert len(records) == sent
    prompt = sum(e.generated()[0] for e in engines)
    completion = sum(e.generated()[1] for e in engines)
    assert sum(r.prompt_tokens for r in records) == prompt
    assert sum(r.completion_tokens for r in records) == completion
    assert sum(1 for r in records if r.status_code == 499) == 12
    assert sum(r.attempts for r in records) == sent + 3


def test_a_revoked_key_is_refused_by_every_gateway_within_a_second(
    model_code, start_engine, start_gateway, new_key
):
    # Given two gateway processes that have both cached the key
    start_engine(model_code)
    gateways = [start_gateway(), start_gateway()]
    row, key = new_key()
    clients = [g.client(key) for g in gateways]
    for client in clients:
        client.models.list()

    # When the key is revoked
    api_key_revoke(key=row)
    revoked_at = time.monotonic()

    # Then both refuse it within one second
    def refused(client) -> bool:  # type: ignore[no-untyped-def]
        try:
            client.models.list()
        except openai.AuthenticationError:
            return True
        return False

    for client in clients:
        wait_for(lambda c=client: refused(c), timeout=1.0, interval=0.02, message="revocation")
    assert time.monotonic() - revoked_at < 1.0


def test_the_request_rate_limit_holds_across_gateway_processes(
    model_code, start_engine, start_gateway, new_key
):
    # Given a key limited to 4 requests per minute and two gateways
    start_engine(model_code)
    gateways = [start_gateway(), start_gateway()]
    _, key = new_key(rpm_limit=4)
    clients = [g.client(key) for g in gateways]
    hello = [{"role": "user", "content": "hi"}]

    # When six requests alternate between the gateways
    outcomes = []
    for i in range(6):
        try:
            clients[i % 2].chat.completions.create(model="sales-bot", messages=hello)
            outcomes.append(200)
        except openai.RateLimitError:
            outcomes.append(429)

    # Then only four get through in all
    assert outcomes == [200, 200, 200, 200, 429, 429]


def test_the_concurrency_limit_holds_across_gateway_processes(
    model_code, start_engine, start_gateway, new_key
):
    # Given a key allowed one request at a time, and a slow engine
    start_engine(model_code, token_rate=20.0)
    gateways = [start_gateway(), start_gateway()]
    _, key = new_key(concurrency_limit=1)
    body = {"model": "sales-bot", "messages": [{"role": "user", "content": "hi"}], "stream": True}
    auth = {"Authorization": f"Bearer {key}"}

    # When a stream is open through one gateway
    with httpx.stream(
        "POST", f"{gateways[0].url}/v1/chat/completions", json=body, headers=auth
    ) as s:
        assert s.status_code == 200
        # Then a second request through the other is refused
        second = httpx.post(f"{gateways[1].url}/v1/chat/completions", json=body, headers=auth)
        assert second.status_code == 429
        assert second.headers["retry-after"] == "1"
        s.read()

    # And once it is over, the next one passes
    third = httpx.post(f"{gateways[1].url}/v1/chat/completions", json=body, headers=auth)
    assert third.status_code == 200


def test_the_token_rate_limit_refuses_once_the_tokens_are_spent(
    model_code, start_engine, start_gateway, new_key
):
    # Given a key allowed 6 tokens per minute, which one request overspends
    start_engine(model_code, max_tokens=8)
    client = start_gateway().client(new_key(tpm_limit=6)[1])
    hello = [{"role": "user", "content": "hi"}]

    client.chat.completions.create(model="sales-bot", messages=hello)  # 2 + 8 tokens

    # Then the next request is refused until the bucket refills
    with pytest.raises(openai.RateLimitError) as refused:
        client.chat.completions.create(model="sales-bot", messages=hello)
    assert "tokens" in refused.value.message

"""Retries before any byte, failover when an engine dies under load, circuit breaking."""

from __future__ import annotations

import threading
from concurrent.futures import ThreadPoolExecutor

import openai

from tests.gateway.conftest import flushed_usage
from tests.processes import wait_for

HELLO = [{"role": "user", "content": "hello"}]


def test_it_retries_on_another_instance_when_an_engine_answers_5xx(
    model_code, start_engine, start_gateway, new_key
):
    # Given two instances, one of which fails its next request
    failing = start_engine(model_code)
    start_engine(model_code)
    client = start_gateway().client(new_key()[1])
    failing.control(fail_next=1, fail_status=503)

    # When clients send requests
    replies = [client.chat.completions.create(model="sales-bot", messages=HELLO) for _ in range(4)]

    # Then all succeed and the failed one was retried once
    assert all(r.choices[0].message.content for r in replies)
    assert failing.control()["fail_next"] == 0
    attempts = sorted(r.attempts for r in flushed_usage(4))
    assert attempts == [1, 1, 1, 2]


def test_no_non_streaming_request_fails_when_an_engine_is_killed_under_load(
    model_code, start_engine, start_gateway, new_key
):
    # Given two instances under steady load from 8 clients
    doomed = start_engine(model_code, token_rate=500.0)
    start_engine(model_code, token_rate=500.0)
    gateway = start_gateway()
    key = new_key()[1]
    done = threading.Event()
    errors: list[Exception] = []
    counts = [0]

    def load() -> None:
        client = gateway.client(key)
        while not done.is_set():
            try:
                client.chat.completions.create(model="sales-bot", messages=HELLO, max_tokens=4)
                counts[0] += 1
            except openai.OpenAIError as exc:
                errors.append(exc)

    with ThreadPoolExecutor(8) as pool:
        for _ in range(8):
            pool.submit(load)
        wait_for(lambda: counts[0] >= 40, timeout=20, message="load to run")

        # When one engine is killed
        doomed.proc.kill()
        before = counts[0]
        wait_for(lambda: counts[0] >= before + 100, timeout=30, message="load to go on")
        done.set()

    # Then no request failed
    assert errors == []


def test_it_takes_a_repeatedly_failing_instance_out_of_rotation(
    model_code, start_engine, start_gateway, new_key
):
    # Given two instances, one failing every request
    failing = start_engine(model_code)
    start_engine(model_code)
    client = start_gateway(GATEWAY_BREAKER_FAILURES="2", GATEWAY_BREAKER_COOLDOWN_S="60").client(
        new_key()[1]
    )
    failing.control(fail_next=1000, fail_status=500)

    # When many requests go through
    for _ in range(20):
        client.chat.completions.create(model="sales-bot", messages=HELLO)

    # Then the failing instance got only the requests that opened its circuit
    assert 1000 - failing.control()["fail_next"] == 2

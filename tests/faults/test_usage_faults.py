"""Usage under faults: what a client received is what is billed, whatever dies.

Real engines, real gateway processes, the official SDK; a private Redis that persists as
compose's does, killed and restarted."""

from __future__ import annotations

import contextlib
import signal
import threading
import time
from collections.abc import Iterator
from typing import Any

import httpx
import openai
import pytest

from apps.billing.models import UsageRecord
from apps.billing.services import usage_flush
from apps.gateway.budget import RedisBudgetControl, period_of
from apps.gateway.usage_buffer import RedisUsageBuffer
from tests.gateway.conftest import GatewayHandle
from tests.processes import PYTHON, ProcessGroup, free_port, wait_for

pytestmark = pytest.mark.usefixtures("transactional_db")

CHAT = [{"role": "user", "content": "tell me a long story"}]


def _content(chunk: Any) -> int:
    return sum(1 for c in chunk.choices if c.delta.content)


def _stream(client: openai.OpenAI, max_tokens: int) -> Iterator[Any]:
    return iter(
        client.chat.completions.create(
            model="sales-bot", messages=CHAT, max_tokens=max_tokens, stream=True
        )
    )


def _records(buffer: RedisUsageBuffer | None, expected: int, timeout: float = 20) -> list[Any]:
    def ready() -> list[UsageRecord] | None:
        usage_flush(buffer=buffer)
        rows = list(UsageRecord.objects.all())
        return rows if len(rows) >= expected else None

    rows: list[UsageRecord] = wait_for(ready, timeout=timeout, message=f"{expected} records")
    return rows


def _uvicorn_gateway(processes: ProcessGroup, redis_url: str, *, graceful_s: int) -> GatewayHandle:
    """The gateway as uvicorn runs it (lifespan on), with a short graceful-shutdown timeout."""
    port = free_port()
    proc = processes.start(
        "gateway-uvicorn",
        [PYTHON, "-m", "uvicorn", "apps.gateway.asgi:application", "--host", "127.0.0.1",
         "--port", str(port), "--lifespan", "on", "--timeout-graceful-shutdown",
         str(graceful_s), "--log-level", "warning"],
        REDIS_URL=redis_url,
    )  # fmt: skip
    url = f"http://127.0.0.1:{port}"
    processes.wait_http(proc, url + "/healthz")
    return GatewayHandle(proc, url)


def test_a_broken_stream_is_billed_the_tokens_it_delivered(
    model_code, start_engine, start_gateway, new_key
):
    # Given a stream being relayed
    engine = start_engine(model_code, token_rate=20.0)
    client = start_gateway().client(new_key()[1])
    chunks = _stream(client, max_tokens=100)
    delivered = sum(_content(next(chunks)) for _ in range(4))  # the role chunk and 3 tokens

    # When the engine dies mid-stream
    with contextlib.suppress(httpx.HTTPError):  # it exits without answering
        engine.control(crash=True)
    with pytest.raises(openai.APIError) as raised:
        for chunk in chunks:
            delivered += _content(chunk)

    # Then the client saw the error, and the record bills exactly what it received
    assert raised.value.code == "upstream_stream_broken"
    (record,) = _records(None, 1)
    assert (record.status_code, record.error_code) == (502, "upstream_stream_broken")
    assert delivered >= 3
    assert record.completion_tokens == delivered


@pytest.mark.slow
def test_a_killed_gateway_worker_mid_stream_is_billed_what_it_delivered(
    model_code, start_engine, start_gateway, new_key, private_redis
):
    # Given a stream through a gateway process (beating every second, dead after 1 s)
    start_engine(model_code, token_rate=25.0)
    gateway = start_gateway(REDIS_URL=private_redis.url, USAGE_GATEWAY_TTL_S="1")
    chunks = _stream(gateway.client(new_key()[1]), max_tokens=200)
    delivered = sum(_content(next(chunks)) for _ in range(11))

    # When the gateway process is SIGKILLed mid-stream
    gateway.proc.kill(signal.SIGKILL)
    with pytest.raises(openai.APIConnectionError):
        for chunk in chunks:
            delivered += _content(chunk)

    # Then, once it is known dead, its stream is billed from its last checkpoint: what was
    # delivered (written ahead, so at most the one batch in flight more), marked interrupted
    (record,) = _records(RedisUsageBuffer(private_redis.url), 1)
    assert delivered >= 10
    assert delivered <= record.completion_tokens <= delivered + 1
    assert (record.status_code, record.error_code) == (502, "gateway_interrupted")


@pytest.mark.slow
def test_a_graceful_shutdown_that_cuts_a_stream_sends_the_error_and_records_it(
    processes, model_code, start_engine, new_key, private_redis
):
    # Given a gateway with a 1 s graceful timeout, one long and one short stream in flight
    start_engine(model_code, token_rate=25.0)
    gateway = _uvicorn_gateway(processes, private_redis.url, graceful_s=1)
    client = gateway.client(new_key()[1])
    long_stream = _stream(client, max_tokens=500)
    delivered = sum(_content(next(long_stream)) for _ in range(3))
    short: list[int] = []
    short_stream = _stream(client, max_tokens=10)

    def read_short() -> None:
        short.append(sum(_content(c) for c in short_stream))

    reader = threading.Thread(target=read_short)
    reader.start()

    # When the gateway gets SIGTERM
    gateway.proc.kill(signal.SIGTERM)

    # Then the short stream finishes, the long one ends with an error event the SDK raises
    with pytest.raises(openai.APIError) as raised:
        for chunk in long_stream:
            delivered += _content(chunk)
    reader.join(10)
    assert raised.value.code == "gateway_shutting_down"
    assert short == [10]
    gateway.proc.proc.wait(15)

    # and its record says so, billing what was delivered
    records = {r.completion_tokens: r for r in _records(RedisUsageBuffer(private_redis.url), 2)}
    cut = records[delivered]
    assert (cut.status_code, cut.error_code) == (503, "gateway_shutting_down")
    assert records[10].status_code == 200


@pytest.mark.slow
def test_a_redis_restart_mid_load_loses_no_usage(
    model_code, start_engine, start_gateway, new_key, private_redis
):
    # Given steady streamed and plain load through a gateway on a persisting Redis
    start_engine(model_code, token_rate=200.0)
    gateway = start_gateway(REDIS_URL=private_redis.url)
    key = new_key()[1]
    delivered: list[int] = []
    failures: list[str] = []
    stop = threading.Event()

    def load(streamed: bool) -> None:
        client = gateway.client(key, timeout=30)
        while not stop.is_set():
            try:
                if streamed:
                    delivered.append(sum(_content(c) for c in _stream(client, max_tokens=12)))
                else:
                    reply = client.chat.completions.create(
                        model="sales-bot", messages=CHAT, max_tokens=6
                    )
                    assert reply.usage is not None
                    delivered.append(reply.usage.completion_tokens)
            except openai.APIError as exc:  # seen by the client: allowed, and billed as such
                failures.append(str(getattr(exc, "code", exc)))

    threads = [threading.Thread(target=load, args=(i % 2 == 0,)) for i in range(4)]
    for thread in threads:
        thread.start()

    # When Redis is SIGKILLed and restarted twice under that load
    time.sleep(1.5)
    private_redis.restart(down_s=0.7)
    time.sleep(1.5)
    private_redis.restart(down_s=0.3)
    time.sleep(1.5)
    stop.set()
    for thread in threads:
        thread.join(40)

    # Then every token a client received is billed, and every request has its record
    answered = len(delivered) + len(failures)
    records = _records(RedisUsageBuffer(private_redis.url), answered)
    assert len(records) == answered
    assert sum(r.completion_tokens for r in records) == sum(delivered)
    assert len(delivered) > 20


def _priced(settings: Any, model_code: Any, private_redis: Any, key_id: int) -> RedisBudgetControl:
    """The model code priced (1e6 pico a prompt token, 2e6 a completion one) in the private
    Redis, and the key given a budget, so that its requests reserve and settle."""
    settings.REDIS_URL = private_redis.url
    control = RedisBudgetControl()
    control.set_price(model_code.id, 1_000_000, 2_000_000)
    control.set_limit("key", key_id, 10**15)
    return control


def _cost(records: list[Any]) -> int:
    return sum(r.prompt_tokens * 1_000_000 + r.completion_tokens * 2_000_000 for r in records)


def _ask(client: openai.OpenAI, max_tokens: int, into: dict[str, Any]) -> threading.Thread:
    def ask() -> None:
        try:
            into["reply"] = client.chat.completions.create(
                model="sales-bot", messages=CHAT, max_tokens=max_tokens
            )
        except openai.APIError as exc:
            into["error"] = exc

    thread = threading.Thread(target=ask)
    thread.start()
    return thread


def test_a_finish_script_that_fails_still_frees_the_slot_and_settles_once(
    model_code, start_engine, start_gateway, new_key, private_redis, settings
):
    # Given a key with one concurrency slot and a budget, and an answer in progress (1.5 s)
    key, secret = new_key(concurrency_limit=1)
    control = _priced(settings, model_code, private_redis, key.id)
    start_engine(model_code, token_rate=4.0)
    gateway = start_gateway(REDIS_URL=private_redis.url, USAGE_WRITE_TIMEOUT_S="10")
    client = gateway.client(secret, timeout=30)
    first: dict[str, Any] = {}
    thread = _ask(client, 6, first)

    # When Redis is SIGKILLed as the answer ends, so that its finish-and-record script fails
    time.sleep(0.5)
    private_redis.restart(down_s=1.5)
    thread.join(30)

    # Then the answer was delivered, and the key's one slot and its reservation are free: the
    # next request is admitted, and what Redis settled is the records' cost, once
    assert "reply" in first, first
    second = client.chat.completions.create(model="sales-bot", messages=CHAT, max_tokens=2)
    records = _records(RedisUsageBuffer(private_redis.url), 2)
    assert sorted(r.completion_tokens for r in records) == sorted(
        [first["reply"].usage.completion_tokens, second.usage.completion_tokens]
    )
    assert control.spent("key", key.id, period_of()) == (_cost(records), 0)


def test_a_finish_script_whose_reply_is_late_bills_what_the_client_got(
    model_code, start_engine, start_gateway, new_key, private_redis, settings
):
    import redis

    # Given a governed answer in progress (1 s) through a gateway that waits 0.6 s for usage
    # (after a first answer: Redis knows the scripts)
    key, secret = new_key(concurrency_limit=1)
    control = _priced(settings, model_code, private_redis, key.id)
    start_engine(model_code, token_rate=4.0)
    gateway = start_gateway(REDIS_URL=private_redis.url, USAGE_WRITE_TIMEOUT_S="0.6")
    client = gateway.client(secret, timeout=30)
    warm = client.chat.completions.create(model="sales-bot", messages=CHAT, max_tokens=1)
    answer: dict[str, Any] = {}
    thread = _ask(client, 4, answer)

    # When Redis stalls its writes as the answer ends, so that the reply of its
    # finish-and-record script comes after the gateway stopped waiting (the script runs)
    time.sleep(0.5)
    redis.Redis.from_url(private_redis.url).execute_command("CLIENT", "PAUSE", 1400, "WRITE")
    thread.join(30)

    # Then the client got what was recorded and settled: the answer (its record was written),
    # not a 503 over an answer billed in full
    assert "reply" in answer, answer
    records = _records(RedisUsageBuffer(private_redis.url), 2)
    assert sorted((r.status_code, r.completion_tokens) for r in records) == sorted(
        [(200, warm.usage.completion_tokens), (200, answer["reply"].usage.completion_tokens)]
    )
    assert control.spent("key", key.id, period_of()) == (_cost(records), 0)
    client.chat.completions.create(model="sales-bot", messages=CHAT, max_tokens=1)

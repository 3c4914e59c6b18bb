"""The gateway's pipelined Redis client (apps.gateway.redis_pipe) against the real Redis:
replies matched in order under concurrency, transactions, scripts, lost and stalled
connections."""

from __future__ import annotations

import asyncio
import secrets
from collections.abc import Callable, Coroutine
from typing import Any, TypeVar

import pytest
import redis
import uvloop
from django.conf import settings

from apps.gateway.redis_pipe import RedisPipe, Script

T = TypeVar("T")

pytestmark = pytest.mark.skipif(not settings.REDIS_URL, reason="needs Redis")


@pytest.fixture(params=["asyncio", "uvloop"])
def run(request: pytest.FixtureRequest) -> Callable[[Coroutine[Any, Any, T]], T]:
    """Each test on both event loops (the gateway runs on uvloop)."""
    return asyncio.run if request.param == "asyncio" else uvloop.run  # type: ignore[return-value]


def _key() -> str:
    return f"{settings.REDIS_PREFIX}test:pipe:{secrets.token_hex(6)}"


def test_it_answers_every_concurrent_command_with_its_own_reply_on_one_connection(run):
    key = _key()

    async def scenario() -> tuple[list[int], int]:
        pipe = RedisPipe(settings.REDIS_URL)
        replies = await asyncio.gather(*[pipe.execute("INCRBY", key, i) for i in range(1, 201)])
        await pipe.execute("DEL", key)
        await pipe.aclose()
        return replies, pipe.connections

    replies, connections = run(scenario())

    # Every caller got the running total after its own increment, in the order sent.
    assert replies == [i * (i + 1) // 2 for i in range(1, 201)]
    assert connections == 1


def test_a_transaction_returns_execs_replies_and_raises_on_a_failed_command(run):
    key = _key()

    async def scenario() -> tuple[list[object], str]:
        pipe = RedisPipe(settings.REDIS_URL)
        ok = await pipe.transaction([("SET", key, "a"), ("APPEND", key, "b"), ("GET", key)])
        with pytest.raises(redis.ResponseError) as failed:
            await pipe.transaction([("SET", key, "c"), ("LPUSH", key, "x")])  # wrong type
        after = await pipe.execute("GET", key)
        await pipe.execute("DEL", key)
        await pipe.aclose()
        return [*ok, after], str(failed.value)

    replies, error = run(scenario())

    assert replies == [b"OK", 2, b"ab", b"c"]  # the failed command's siblings still ran
    assert "WRONGTYPE" in error


def test_a_script_unknown_to_redis_is_sent_whole_once_then_by_digest(run):
    script = Script(f"-- {secrets.token_hex(8)}\nreturn {{KEYS[1], ARGV[1] + 1}}")

    async def scenario() -> list[object]:
        pipe = RedisPipe(settings.REDIS_URL)
        first = await pipe.evalsha(script, ["k"], [41])
        known = await pipe.execute("SCRIPT", "EXISTS", script.sha)
        await pipe.aclose()
        return [first, known]

    first, known = run(scenario())

    assert first == [b"k", 42]
    assert known == [1]


def test_a_lost_connection_fails_its_commands_and_the_next_one_reconnects(run):
    async def scenario() -> tuple[str, bytes, int]:
        pipe = RedisPipe(settings.REDIS_URL)
        client_id = await pipe.execute("CLIENT", "ID")
        killer = RedisPipe(settings.REDIS_URL)
        waiting = asyncio.ensure_future(pipe.execute("BLPOP", _key(), 5))
        await asyncio.sleep(0.05)
        await killer.execute("CLIENT", "KILL", "ID", client_id)
        with pytest.raises(redis.ConnectionError) as lost:
            await waiting
        pong = await pipe.execute("PING")
        await pipe.aclose()
        await killer.aclose()
        return str(lost.value), pong, pipe.connections

    lost, pong, connections = run(scenario())

    assert "lost" in lost
    assert (pong, connections) == (b"PONG", 2)


def test_a_reply_that_does_not_come_in_time_fails_with_a_timeout_and_resets_the_connection(run):
    async def scenario() -> tuple[bytes, int]:
        pipe = RedisPipe(settings.REDIS_URL, reply_timeout_s=0.3)
        with pytest.raises(redis.TimeoutError):
            await pipe.execute("BLPOP", _key(), 2)  # a stalled Redis, as seen by the client
        pong = await pipe.execute("PING")
        await pipe.aclose()
        return pong, pipe.connections

    assert run(scenario()) == (b"PONG", 2)


def test_it_reports_an_unreachable_redis_as_a_connection_error(run):
    async def scenario() -> None:
        pipe = RedisPipe("redis://127.0.0.1:1/0", connect_timeout_s=0.5)
        await pipe.execute("PING")

    with pytest.raises(redis.ConnectionError):
        run(scenario())

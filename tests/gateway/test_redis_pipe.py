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

from apps.gateway.redis_pipe import RedisPipe, Script, encode_bulk

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
        # keys encoded once, as governance sends them
        again = await pipe.evalsha(script, (1, encode_bulk(["k2"])), [b"1"])
        await pipe.aclose()
        return [first, known, again]

    first, known, again = run(scenario())

    assert first == [b"k", 42]
    assert known == [1]
    assert again == [b"k2", 2]


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


class _FakeRedis:
    """A Redis on a local port that never answers its first connection (a stalled AUTH) and
    answers AUTH, PING and ECHO on the next ones; it counts the connections still open."""

    def __init__(self) -> None:
        self.accepted = 0
        self.open = 0
        self.server: asyncio.Server | None = None

    async def start(self) -> int:
        self.server = await asyncio.start_server(self._handle, "127.0.0.1", 0)
        return int(self.server.sockets[0].getsockname()[1])

    async def _handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.accepted += 1
        self.open += 1
        silent = self.accepted == 1
        try:
            while True:
                header = await reader.readline()
                if not header:
                    return
                args = []
                for _ in range(int(header[1:])):
                    size = int((await reader.readline())[1:])
                    args.append((await reader.readexactly(size + 2))[:-2])
                if silent:
                    continue
                command = args[0].upper()
                if command == b"ECHO":
                    writer.write(b"$%d\r\n%s\r\n" % (len(args[1]), args[1]))
                else:
                    writer.write(b"+OK\r\n" if command == b"AUTH" else b"+PONG\r\n")
        except (ConnectionError, asyncio.IncompleteReadError):
            return
        finally:
            self.open -= 1
            writer.close()


def test_a_slow_auth_fails_its_commands_and_the_next_connection_gets_its_own_replies(run):
    async def scenario() -> tuple[list[str], list[object], int, int]:
        fake = _FakeRedis()
        port = await fake.start()
        pipe = RedisPipe(f"redis://:secret@127.0.0.1:{port}/0", connect_timeout_s=0.3)
        first = asyncio.ensure_future(pipe.execute("ECHO", "first"))
        await asyncio.sleep(0.05)  # connected, AUTH unanswered: this one is sent behind it
        queued = asyncio.ensure_future(pipe.execute("ECHO", "queued"))
        errors = []
        for task in (first, queued):
            with pytest.raises(redis.ConnectionError) as failed:
                await asyncio.wait_for(task, 3)
            errors.append(str(failed.value))
        later = [await asyncio.wait_for(pipe.execute("ECHO", w), 3) for w in ("a", "b")]
        later.append(await asyncio.wait_for(pipe.execute("PING"), 3))
        for _ in range(100):  # the stalled connection is closed by the client
            if fake.open == 1:
                break
            await asyncio.sleep(0.01)
        open_before_close = fake.open
        await pipe.aclose()
        for _ in range(100):
            if fake.open == 0:
                break
            await asyncio.sleep(0.01)
        assert fake.server is not None
        fake.server.close()
        return errors, later, open_before_close, fake.open

    errors, later, open_before_close, open_after = run(scenario())

    assert all("cannot connect to Redis" in e for e in errors)
    assert later == [b"a", b"b", b"PONG"]
    assert (open_before_close, open_after) == (1, 0)

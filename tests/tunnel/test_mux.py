"""The tunnel itself (issue 12, hosts behind NAT), in one process but over real sockets: the
gateway side (``apps.gateway.tunnel`` under a real uvicorn server), the agent side
(``agent.tunnel``, real WebSocket client) and an engine that is a real TCP server on loopback.
Streams are multiplexed and flow-controlled, a closed client connection closes the engine's,
and a refused credential gets no tunnel."""

from __future__ import annotations

import asyncio
import contextlib
import socket
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field
from typing import Any

import uvicorn

from agent.tunnel import TunnelClient
from agent.tunnel_mux import TUNNEL_PATH, WINDOW_BYTES
from apps.gateway.tunnel import TunnelRegistry

CREDENTIAL = "ivc_good"


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@dataclass
class Engine:
    """A line-oriented engine: ``stream N`` answers N lines, one per 20 ms; ``blob N`` answers
    N bytes at once; ``echo`` echoes what it reads. It records every connection that ended."""

    port: int = 0
    ended: list[str] = field(default_factory=list)
    server: asyncio.Server | None = None

    async def start(self) -> None:
        self.server = await asyncio.start_server(self._handle, "127.0.0.1", 0)
        self.port = self.server.sockets[0].getsockname()[1]

    async def _handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        how = "eof"
        try:
            line = (await reader.readline()).decode().split()
            if line and line[0] == "stream":
                for i in range(int(line[1])):
                    if i:
                        await asyncio.sleep(0.02)
                    if reader.at_eof():
                        how = f"client left after {i}"
                        return
                    writer.write(f"line {i}\n".encode())
                    await writer.drain()
                how = "complete"
            elif line and line[0] == "blob":
                writer.write(b"x" * int(line[1]))
                await writer.drain()
                how = "complete"
            elif line and line[0] == "echo":
                while data := await reader.read(65536):
                    writer.write(data)
                    await writer.drain()
        except ConnectionError:
            how = "reset"
        finally:
            self.ended.append(how)
            writer.close()


async def _authenticate(credential: str) -> str | None:
    return "inst-1" if credential == CREDENTIAL else None


async def until(check: Callable[[], bool], within_s: float = 5.0) -> None:
    deadline = asyncio.get_running_loop().time() + within_s
    while not check():
        assert asyncio.get_running_loop().time() < deadline, "timed out"
        await asyncio.sleep(0.01)


@contextlib.asynccontextmanager
async def gateway(registry: TunnelRegistry) -> AsyncIterator[str]:
    async def app(scope: dict[str, Any], receive: Any, send: Any) -> None:
        if scope["type"] == "websocket" and scope["path"] == TUNNEL_PATH:
            await registry.serve(scope, receive, send, _authenticate)

    port = free_port()
    server = uvicorn.Server(
        uvicorn.Config(app, host="127.0.0.1", port=port, lifespan="off", log_level="warning")
    )
    task = asyncio.ensure_future(server.serve())
    await until(lambda: server.started)
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        server.should_exit = True
        await task


async def dial(registry: TunnelRegistry) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
    host, port = registry.url_for("inst-1").removeprefix("http://").split(":")
    return await asyncio.open_connection(host, int(port))


@contextlib.asynccontextmanager
async def tunnel(credential: str = CREDENTIAL) -> AsyncIterator[tuple[TunnelRegistry, Engine]]:
    engine = Engine()
    await engine.start()
    registry = TunnelRegistry()
    async with gateway(registry) as url:
        client = TunnelClient(
            url, credential=credential, instance_id="inst-1", engine_port=engine.port
        )
        client.start()
        try:
            yield registry, engine
        finally:
            await client.stop()
            assert engine.server is not None
            engine.server.close()


async def test_it_carries_concurrent_streams_over_one_tunnel() -> None:
    async with tunnel() as (registry, engine):
        await until(lambda: registry.connected("inst-1"))

        async def one(n: int) -> list[bytes]:
            reader, writer = await dial(registry)
            writer.write(f"stream {n}\n".encode())
            lines = [await reader.readline() for _ in range(n)]
            writer.close()
            return lines

        # when 16 streams run at once through the one tunnel
        answers = await asyncio.gather(*(one(5 + i) for i in range(16)))
        # then each got exactly its own lines, in order
        for i, lines in enumerate(answers):
            assert lines == [f"line {j}\n".encode() for j in range(5 + i)]
        await until(lambda: engine.ended.count("complete") == 16)


async def test_it_moves_more_than_a_window_each_way_without_losing_a_byte() -> None:
    async with tunnel() as (registry, _engine):
        await until(lambda: registry.connected("inst-1"))
        size = 5 * WINDOW_BYTES + 123
        reader, writer = await dial(registry)
        writer.write(f"blob {size}\n".encode())
        # the client reads slowly at first: credit, not memory, holds the engine back
        await asyncio.sleep(0.2)
        data = await reader.readexactly(size)
        assert data == b"x" * size
        writer.close()
        # and the other way: an echo of 3 windows, written whole before reading
        reader, writer = await dial(registry)
        payload = bytes(range(256)) * (3 * WINDOW_BYTES // 256)
        writer.write(b"echo\n" + payload)
        assert await reader.readexactly(len(payload)) == payload
        writer.close()


async def test_a_client_that_leaves_closes_the_engine_connection() -> None:
    async with tunnel() as (registry, engine):
        await until(lambda: registry.connected("inst-1"))
        reader, writer = await dial(registry)
        writer.write(b"stream 500\n")
        assert await reader.readline() == b"line 0\n"
        # when the client (the gateway's upstream connection) closes mid-stream
        writer.close()
        # then the engine sees its client leave long before the 10 s stream would end
        await until(lambda: bool(engine.ended), within_s=3)
        assert engine.ended[0].startswith("client left after"), engine.ended
        assert int(engine.ended[0].rsplit(" ", 1)[1]) < 100
        await until(lambda: registry.streams("inst-1") == 0)


async def test_it_refuses_a_wrong_credential_and_carries_nothing() -> None:
    async with tunnel(credential="ivc_wrong") as (registry, engine):
        await asyncio.sleep(0.5)
        assert not registry.connected("inst-1")
        # a connection to the instance's local end is closed at once (the proxy fails over)
        reader, writer = await dial(registry)
        writer.write(b"stream 3\n")
        try:
            answer = await reader.read()
        except ConnectionResetError:  # closed with our request unread
            answer = b""
        assert answer == b""
        writer.close()
        assert engine.ended == []


async def test_streams_break_when_the_tunnel_drops_and_it_comes_back() -> None:
    engine = Engine()
    await engine.start()
    registry = TunnelRegistry()
    async with gateway(registry) as url:
        client = TunnelClient(
            url, credential=CREDENTIAL, instance_id="inst-1", engine_port=engine.port
        )
        client.start()
        await until(lambda: registry.connected("inst-1"))
        reader, writer = await dial(registry)
        writer.write(b"stream 500\n")
        assert await reader.readline() == b"line 0\n"
        # when the agent's side goes away
        await client.stop()
        # then the stream ends on both sides
        assert await asyncio.wait_for(reader.read(), 3) is not None
        await until(lambda: bool(engine.ended), within_s=3)
        await until(lambda: not registry.connected("inst-1"))
        writer.close()
        # and a new tunnel serves again
        client = TunnelClient(
            url, credential=CREDENTIAL, instance_id="inst-1", engine_port=engine.port
        )
        client.start()
        await until(lambda: registry.connected("inst-1"))
        reader, writer = await dial(registry)
        writer.write(b"stream 2\n")
        assert [await reader.readline() for _ in range(2)] == [b"line 0\n", b"line 1\n"]
        writer.close()
        await client.stop()

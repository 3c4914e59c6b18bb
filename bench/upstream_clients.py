"""Upstream client comparison on the gateway's path: ``.venv/bin/python -m
bench.upstream_clients [--requests 2000] [--runs 3]``. The mock engine runs on core 1, the client
on core 0 (uvloop, as the gateway); each client posts 32-token chat completions at concurrency
1, 16 and 64, and the table gives its requests per second and its own CPU per request (the
client process's CPU time over the measured window), medians of ``--runs`` interleaved runs,
with ratios against aiohttp (the gateway's client) in the same run.

Clients: httpx 0.28, aiohttp (the gateway's: one pooled ``ClientSession``), and ``raw``: a
minimal keep-alive HTTP/1.1 client on ``asyncio.Protocol`` and httptools' response parser
(what a lean upstream path could cost; it has no TLS, timeouts, redirects or chunked request
bodies, so it says how much of aiohttp's cost is its generality, not what the gateway could
ship as is)."""

from __future__ import annotations

import argparse
import asyncio
import os
import statistics
import subprocess
import sys
import time
from collections.abc import Awaitable, Callable
from urllib.parse import urlparse

import aiohttp
import httptools
import httpx
import uvloop

from bench.gateway import ROOT, _free_port, _wait_http

BODY = b'{"model":"m","messages":[{"role":"user","content":"hi there"}],"max_tokens":32}'
HEADERS = {"authorization": "Bearer k", "content-type": "application/json"}


Result = tuple[float, float]  # requests per second, client CPU microseconds per request


async def _measure(n: int, concurrency: int, one: Callable[[], Awaitable[None]]) -> Result:
    async def worker(k: int) -> None:
        for _ in range(k):
            await one()

    await worker(20)
    cpu, start = time.process_time(), time.perf_counter()
    await asyncio.gather(*[worker(n // concurrency) for _ in range(concurrency)])
    wall, cpu = time.perf_counter() - start, time.process_time() - cpu
    done = n // concurrency * concurrency
    return done / wall, cpu / done * 1e6


async def _httpx(url: str, n: int, concurrency: int) -> Result:
    limits = httpx.Limits(max_connections=200, max_keepalive_connections=200)
    async with httpx.AsyncClient(limits=limits, timeout=30) as client:

        async def one() -> None:
            response = await client.post(url, content=BODY, headers=HEADERS)
            await response.aread()

        return await _measure(n, concurrency, one)


async def _aiohttp(url: str, n: int, concurrency: int) -> Result:
    connector = aiohttp.TCPConnector(limit=200)
    async with aiohttp.ClientSession(connector=connector, auto_decompress=False) as session:

        async def one() -> None:
            async with session.post(url, data=BODY, headers=HEADERS) as response:
                await response.read()

        return await _measure(n, concurrency, one)


class _RawConnection(asyncio.Protocol):
    """One keep-alive connection: a request written whole, its response parsed by httptools."""

    def __init__(self) -> None:
        self.parser = httptools.HttpResponseParser(self)
        self.transport: asyncio.Transport | None = None
        self.waiter: asyncio.Future[tuple[int, bytes]] | None = None
        self.body: list[bytes] = []

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]

    def data_received(self, data: bytes) -> None:
        self.parser.feed_data(data)

    def on_body(self, body: bytes) -> None:
        self.body.append(body)

    def on_message_complete(self) -> None:
        waiter, self.waiter = self.waiter, None
        body, self.body = b"".join(self.body), []
        if waiter is not None and not waiter.done():
            waiter.set_result((self.parser.get_status_code(), body))

    def connection_lost(self, exc: Exception | None) -> None:
        if self.waiter is not None and not self.waiter.done():
            self.waiter.set_exception(ConnectionError("closed"))


async def _raw(url: str, n: int, concurrency: int) -> Result:
    parsed = urlparse(url)
    host, port = parsed.hostname or "127.0.0.1", parsed.port or 80
    head = (
        f"POST {parsed.path} HTTP/1.1\r\nHost: {host}:{port}\r\n"
        + "".join(f"{k}: {v}\r\n" for k, v in HEADERS.items())
        + f"content-length: {len(BODY)}\r\n\r\n"
    ).encode()
    loop = asyncio.get_running_loop()
    idle: list[_RawConnection] = []

    async def one() -> None:
        if idle:
            conn = idle.pop()
        else:
            _, conn = await loop.create_connection(_RawConnection, host, port)
        conn.waiter = loop.create_future()
        assert conn.transport is not None
        conn.transport.write(head + BODY)
        status, _body = await conn.waiter
        if status != 200:
            raise RuntimeError(f"status {status}")
        idle.append(conn)

    try:
        return await _measure(n, concurrency, one)
    finally:
        for conn in idle:
            if conn.transport is not None:
                conn.transport.close()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.upstream_clients", description=__doc__)
    parser.add_argument("--requests", type=int, default=2000, help="requests per cell")
    parser.add_argument("--runs", type=int, default=3, help="interleaved runs (medians)")
    args = parser.parse_args(argv)
    port = _free_port()
    engine = subprocess.Popen(
        [sys.executable, "-m", "agent.mock_engine", "--port", str(port),
         "--served-model-name", "m", "--model-id", "x", "--default-max-tokens", "32"],
        cwd=ROOT, env={**os.environ, "MOCK_ENGINE_API_KEY": "k"},
    )  # fmt: skip
    clients = (("httpx", _httpx), ("aiohttp", _aiohttp), ("raw", _raw))
    try:
        if len(os.sched_getaffinity(0)) >= 2:
            os.sched_setaffinity(engine.pid, {1})
            os.sched_setaffinity(0, {0})
        _wait_http(f"http://127.0.0.1:{port}/health", engine)
        url = f"http://127.0.0.1:{port}/v1/chat/completions"
        results: dict[tuple[str, int], list[Result]] = {}
        for _ in range(args.runs):
            for concurrency in (1, 16, 64):
                for name, run in clients:
                    result = uvloop.run(run(url, args.requests, concurrency))
                    results.setdefault((name, concurrency), []).append(result)
        print(f"medians of {args.runs} interleaved runs, {args.requests} requests per cell\n")
        print("| client  | conc | req/s | CPU µs/req | CPU vs aiohttp |")
        print("|---------|-----:|------:|-----------:|---------------:|")
        for concurrency in (1, 16, 64):
            base = statistics.median(r[1] for r in results[("aiohttp", concurrency)])
            for name, _run in clients:
                cell = results[(name, concurrency)]
                rate = statistics.median(r[0] for r in cell)
                cpu = statistics.median(r[1] for r in cell)
                print(
                    f"| {name:7} | {concurrency:>4} | {rate:>5.0f} | {cpu:>10.1f} | "
                    f"{cpu / base:>14.2f} |"
                )
    finally:
        engine.terminate()
        engine.wait(10)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

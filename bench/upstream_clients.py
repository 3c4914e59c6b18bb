"""Upstream client comparison (httpx vs aiohttp) on the gateway's path:
``.venv/bin/python -m bench.upstream_clients``. The mock engine runs on core 1, the client on
core 0; each client posts 32-token chat completions at concurrency 1, 16 and 64."""

from __future__ import annotations

import asyncio
import os
import subprocess
import sys
import time

import aiohttp
import httpx

from bench.gateway import ROOT, _free_port, _wait_http

BODY = b'{"model":"m","messages":[{"role":"user","content":"hi there"}],"max_tokens":32}'
HEADERS = {"authorization": "Bearer k", "content-type": "application/json"}


async def _httpx(url: str, n: int, concurrency: int) -> float:
    limits = httpx.Limits(max_connections=200, max_keepalive_connections=200)
    async with httpx.AsyncClient(limits=limits, timeout=30) as client:

        async def worker(k: int) -> None:
            for _ in range(k):
                response = await client.post(url, content=BODY, headers=HEADERS)
                await response.aread()

        await worker(20)
        start = time.perf_counter()
        await asyncio.gather(*[worker(n // concurrency) for _ in range(concurrency)])
        return n / (time.perf_counter() - start)


async def _aiohttp(url: str, n: int, concurrency: int) -> float:
    connector = aiohttp.TCPConnector(limit=200)
    async with aiohttp.ClientSession(connector=connector) as session:

        async def worker(k: int) -> None:
            for _ in range(k):
                async with session.post(url, data=BODY, headers=HEADERS) as response:
                    await response.read()

        await worker(20)
        start = time.perf_counter()
        await asyncio.gather(*[worker(n // concurrency) for _ in range(concurrency)])
        return n / (time.perf_counter() - start)


def main() -> int:
    port = _free_port()
    engine = subprocess.Popen(
        [sys.executable, "-m", "agent.mock_engine", "--port", str(port),
         "--served-model-name", "m", "--model-id", "x", "--default-max-tokens", "32"],
        cwd=ROOT, env={**os.environ, "MOCK_ENGINE_API_KEY": "k"},
    )  # fmt: skip
    try:
        if len(os.sched_getaffinity(0)) >= 2:
            os.sched_setaffinity(engine.pid, {1})
            os.sched_setaffinity(0, {0})
        _wait_http(f"http://127.0.0.1:{port}/health", engine)
        url = f"http://127.0.0.1:{port}/v1/chat/completions"
        print("| client  | conc | req/s |")
        print("|---------|------|-------|")
        for concurrency in (1, 16, 64):
            for name, run in (("httpx", _httpx), ("aiohttp", _aiohttp)):
                rate = asyncio.run(run(url, 2000, concurrency))
                print(f"| {name:7} | {concurrency:>4} | {rate:>5.0f} |")
    finally:
        engine.terminate()
        engine.wait(10)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

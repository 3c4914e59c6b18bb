"""``python -m agent.mock_engine.bench``: measure the mock engine's non-streaming throughput.

A minimal HTTP/1.1 keep-alive load generator on raw asyncio streams (uvloop), so the client
costs as little as possible. Start the mock engine first (pin it with ``taskset`` to measure
one core), then: ``python -m agent.mock_engine.bench --url http://127.0.0.1:8000 --key K``.
"""

from __future__ import annotations

import argparse
import asyncio
import time
from urllib.parse import urlsplit

import orjson
import uvloop


def build_request(host: str, path: str, key: str, body: bytes) -> bytes:
    head = (
        f"POST {path} HTTP/1.1\r\nHost: {host}\r\nAuthorization: Bearer {key}\r\n"
        f"Content-Type: application/json\r\nContent-Length: {len(body)}\r\n\r\n"
    )
    return head.encode() + body


async def worker(host: str, port: int, request: bytes, deadline: float, counts: list[int]) -> None:
    reader, writer = await asyncio.open_connection(host, port)
    try:
        while time.perf_counter() < deadline:
            writer.write(request)
            head = await reader.readuntil(b"\r\n\r\n")
            if not head.startswith(b"HTTP/1.1 200"):
                raise RuntimeError(head.decode(errors="replace"))
            length = 0
            for line in head.split(b"\r\n"):
                if line.lower().startswith(b"content-length:"):
                    length = int(line.split(b":", 1)[1])
            await reader.readexactly(length)
            counts[0] += 1
    finally:
        writer.close()


async def run(url: str, key: str, connections: int, seconds: float, max_tokens: int) -> float:
    parts = urlsplit(url)
    host, port = parts.hostname or "127.0.0.1", parts.port or 80
    body = orjson.dumps(
        {
            "messages": [{"role": "user", "content": "hello there, how are you?"}],
            "max_tokens": max_tokens,
        }
    )
    request = build_request(host, "/v1/chat/completions", key, body)
    counts = [0]
    warmup = time.perf_counter() + 1.0
    await asyncio.gather(*(worker(host, port, request, warmup, [0]) for _ in range(connections)))
    start = time.perf_counter()
    deadline = start + seconds
    await asyncio.gather(
        *(worker(host, port, request, deadline, counts) for _ in range(connections))
    )
    return counts[0] / (time.perf_counter() - start)


def main() -> None:
    p = argparse.ArgumentParser(prog="python -m agent.mock_engine.bench")
    p.add_argument("--url", default="http://127.0.0.1:8000")
    p.add_argument("--key", required=True)
    p.add_argument("--connections", type=int, default=32)
    p.add_argument("--seconds", type=float, default=5.0)
    p.add_argument("--max-tokens", type=int, default=16)
    args = p.parse_args()
    rate = uvloop.run(run(args.url, args.key, args.connections, args.seconds, args.max_tokens))
    print(f"{rate:.0f} non-streaming chat completions/s")


if __name__ == "__main__":
    main()

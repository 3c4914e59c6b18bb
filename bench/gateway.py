"""Gateway benchmark: ``.venv/bin/python -m bench.gateway [--duration 3] [--max-tokens 32]``.

Starts the mock engine in fast mode (no token delay) and a standalone gateway in front of it,
then measures direct-to-engine and through-gateway, streaming and not, at concurrency 1, 16 and
64: requests/s, p50/p99 latency, time to first byte of the answer (TTFT), errors, and the
gateway/direct ratios. The gateway runs alone on core 0; the engine and this load generator on
core 1, so that figures compare across runs (on a machine with at least 2 cores).

The control data (organization, model code, ready instance, key) lives in a throw-away SQLite
database; with ``REDIS_URL`` set, the gateway buffers usage in Redis (under a throw-away prefix)
as in production, else in process (the embedded mode).
"""

from __future__ import annotations

import argparse
import asyncio
import os
import secrets
import socket
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
CONCURRENCY = (1, 16, 64)


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def _wait_http(url: str, proc: subprocess.Popen[bytes], timeout: float = 30) -> None:
    import httpx

    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise SystemExit(f"process for {url} exited with {proc.returncode}")
        try:
            if httpx.get(url, timeout=1).status_code < 500:
                return
        except httpx.HTTPError:
            pass
        time.sleep(0.1)
    raise SystemExit(f"{url} did not come up")


def _setup_data(engine_port: int, engine_secret: str) -> str:
    """Create the organization, model code, ready instance and key; return the key."""
    import django

    django.setup()
    from django.core.management import call_command
    from django.utils import timezone

    call_command("migrate", verbosity=0, interactive=False)
    from apps.accounts.models import Organization
    from apps.accounts.services import user_create
    from apps.gateway.services import api_key_create
    from apps.instances.models import Instance, Provider
    from apps.models.models import LlmModel
    from inventiv.crypto import encrypt

    user = user_create(email="bench@example.com", password="bench-password-9")
    org = Organization.objects.get(memberships__user=user)
    model = LlmModel.objects.create(
        organization=org, name="bench-bot", engine="mock", model_id="mock/bench", status="active"
    )
    provider, _ = Provider.objects.get_or_create(name="bench", defaults={"kind": "local"})
    now = timezone.now()
    Instance.objects.create(
        organization=org,
        llm_model=model,
        provider=provider,
        status="ready",
        status_changed_at=now,
        ready_at=now,
        engine_host="127.0.0.1",
        engine_port=engine_port,
        engine_secret_encrypted=encrypt(engine_secret),
    )
    _, key = api_key_create(organization=org, name="bench")
    return key


@dataclass
class Result:
    rps: float
    p50: float
    p99: float
    ttft50: float
    errors: int
    count: int


def _pct(values: list[float], q: float) -> float:
    if not values:
        return float("nan")
    values = sorted(values)
    return values[min(len(values) - 1, int(q * len(values)))]


async def _run(
    url: str, key: str, *, stream: bool, concurrency: int, duration: float, max_tokens: int
) -> Result:
    import aiohttp
    import orjson

    body = orjson.dumps(
        {
            "model": "bench-bot",
            "messages": [{"role": "user", "content": "Say something about benchmarks."}],
            "max_tokens": max_tokens,
            "stream": stream,
        }
    )
    headers = {"Authorization": f"Bearer {key}", "Content-Type": "application/json"}
    latencies: list[float] = []
    ttfts: list[float] = []
    errors = 0
    connector = aiohttp.TCPConnector(limit=concurrency + 4)
    async with aiohttp.ClientSession(connector=connector) as session:

        async def one(record: bool) -> None:
            nonlocal errors
            start = time.perf_counter()
            try:
                async with session.post(url, data=body, headers=headers) as resp:
                    first = None
                    if stream:
                        async for _ in resp.content.iter_any():
                            if first is None:
                                first = time.perf_counter()
                    else:
                        await resp.read()
                        first = time.perf_counter()
                    ok = resp.status == 200
            except aiohttp.ClientError:
                ok = False
            end = time.perf_counter()
            if not record:
                return
            if not ok:
                errors += 1
                return
            latencies.append(end - start)
            ttfts.append((first or end) - start)

        async def worker(deadline: float, record: bool) -> None:
            while time.perf_counter() < deadline:
                await one(record)

        warm = time.perf_counter() + min(1.0, duration / 3)
        await asyncio.gather(*[worker(warm, False) for _ in range(concurrency)])
        start = time.perf_counter()
        deadline = start + duration
        await asyncio.gather(*[worker(deadline, True) for _ in range(concurrency)])
        elapsed = time.perf_counter() - start
    return Result(
        rps=len(latencies) / elapsed,
        p50=_pct(latencies, 0.5) * 1000,
        p99=_pct(latencies, 0.99) * 1000,
        ttft50=_pct(ttfts, 0.5) * 1000,
        errors=errors,
        count=len(latencies),
    )


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.gateway", description=__doc__)
    parser.add_argument("--duration", type=float, default=3.0, help="seconds per measurement")
    parser.add_argument("--max-tokens", type=int, default=32)
    args = parser.parse_args(argv)

    state = tempfile.mkdtemp(prefix="inventiv-bench-")
    env = {
        **os.environ,
        "DJANGO_SETTINGS_MODULE": "inventiv.settings",
        "INVENTIV_STATE_DIR": state,
        "INVENTIV_REDIS_PREFIX": f"bench-{secrets.token_hex(3)}:",
        "SECRET_KEY": os.environ.get("SECRET_KEY") or secrets.token_urlsafe(32),
        "LOG_LEVEL": "WARNING",
        "PYTHONPATH": str(ROOT),
    }
    env.pop("DATABASE_URL", None)
    shared = ("INVENTIV_STATE_DIR", "INVENTIV_REDIS_PREFIX", "SECRET_KEY", "LOG_LEVEL")
    os.environ.update({k: env[k] for k in (*shared, "DJANGO_SETTINGS_MODULE")})
    os.environ.pop("DATABASE_URL", None)
    two_cores = len(os.sched_getaffinity(0)) >= 2
    engine_port, gateway_port = _free_port(), _free_port()
    engine_secret = secrets.token_urlsafe(24)
    procs: list[subprocess.Popen[bytes]] = []
    try:
        engine = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "agent.mock_engine",
                "--port",
                str(engine_port),
                "--served-model-name",
                "bench-bot",
                "--model-id",
                "mock/bench",
                "--default-max-tokens",
                str(args.max_tokens),
            ],
            cwd=ROOT,
            env={**env, "MOCK_ENGINE_API_KEY": engine_secret},
        )
        procs.append(engine)
        if two_cores:
            os.sched_setaffinity(engine.pid, {1})
            os.sched_setaffinity(0, {1})
        _wait_http(f"http://127.0.0.1:{engine_port}/health", engine)
        key = _setup_data(engine_port, engine_secret)
        gateway = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "apps.gateway",
                "--host",
                "127.0.0.1",
                "--port",
                str(gateway_port),
            ],
            cwd=ROOT,
            env=env,
        )
        procs.append(gateway)
        if two_cores:
            os.sched_setaffinity(gateway.pid, {0})
        _wait_http(f"http://127.0.0.1:{gateway_port}/healthz", gateway)

        targets = {
            "direct": (f"http://127.0.0.1:{engine_port}/v1/chat/completions", engine_secret),
            "gateway": (f"http://127.0.0.1:{gateway_port}/v1/chat/completions", key),
        }
        results: dict[tuple[str, bool, int], Result] = {}
        for stream in (False, True):
            for concurrency in CONCURRENCY:
                for name, (url, token) in targets.items():
                    results[(name, stream, concurrency)] = asyncio.run(
                        _run(
                            url,
                            token,
                            stream=stream,
                            concurrency=concurrency,
                            duration=args.duration,
                            max_tokens=args.max_tokens,
                        )
                    )
        _print(results, args, two_cores)
    finally:
        for proc in procs:
            proc.terminate()
        for proc in procs:
            try:
                proc.wait(10)
            except subprocess.TimeoutExpired:
                proc.kill()
        _cleanup_redis(env)
    return 0


def _cleanup_redis(env: dict[str, str]) -> None:
    url = env.get("REDIS_URL")
    if not url:
        return
    import redis

    client = redis.Redis.from_url(url)
    keys = list(client.scan_iter(match=env["INVENTIV_REDIS_PREFIX"] + "*", count=1000))
    if keys:
        client.delete(*keys)


def _print(
    results: dict[tuple[str, bool, int], Result], args: argparse.Namespace, two_cores: bool
) -> None:
    pinning = "gateway on core 0, engine + load generator on core 1" if two_cores else "unpinned"
    print(
        f"\nGateway benchmark: {args.max_tokens}-token answers, {args.duration:.0f} s per cell, "
        f"{pinning}, usage buffer: {'redis' if os.environ.get('REDIS_URL') else 'in-process'}\n"
    )
    header = (
        f"| {'mode':6} | {'conc':>4} | {'target':7} | {'req/s':>7} | {'p50 ms':>7} | "
        f"{'p99 ms':>7} | {'TTFT p50':>8} | {'errors':>6} |"
    )
    print(header)
    print("|" + "|".join("-" * (len(c)) for c in header.split("|")[1:-1]) + "|")
    for stream in (False, True):
        for concurrency in CONCURRENCY:
            for name in ("direct", "gateway"):
                r = results[(name, stream, concurrency)]
                print(
                    f"| {'stream' if stream else 'plain':6} | {concurrency:>4} | {name:7} | "
                    f"{r.rps:>7.0f} | {r.p50:>7.2f} | {r.p99:>7.2f} | {r.ttft50:>8.2f} | "
                    f"{r.errors:>6} |"
                )
    print("\nGateway vs direct:\n")
    print("| mode   | conc | added p50 ms | added TTFT p50 ms | throughput gateway/direct |")
    print("|--------|------|--------------|-------------------|---------------------------|")
    for stream in (False, True):
        for concurrency in CONCURRENCY:
            d, g = (
                results[("direct", stream, concurrency)],
                results[("gateway", stream, concurrency)],
            )
            mode = "stream" if stream else "plain"
            ratio = g.rps / d.rps if d.rps else 0
            print(
                f"| {mode:6} | {concurrency:>4} | {g.p50 - d.p50:>12.2f} | "
                f"{g.ttft50 - d.ttft50:>17.2f} | {ratio:>25.2f} |"
            )
    c1, s1 = results[("gateway", False, 1)], results[("gateway", True, 1)]
    c64, s64 = results[("gateway", False, 64)], results[("gateway", True, 64)]
    added = c1.p50 - results[("direct", False, 1)].p50
    added_ttft = s1.ttft50 - results[("direct", True, 1)].ttft50
    errors = sum(r.errors for r in results.values())
    print("\nTargets:")
    print(f"  added p50 at c=1 <= 1 ms: {added:.2f} ms {'OK' if added <= 1 else 'MISSED'}")
    print(
        f"  added TTFT at c=1 <= 1 ms: {added_ttft:.2f} ms {'OK' if added_ttft <= 1 else 'MISSED'}"
    )
    print(f"  c=64 plain >= 1000 req/s: {c64.rps:.0f} {'OK' if c64.rps >= 1000 else 'MISSED'}")
    print(f"  c=64 stream >= 400 resp/s: {s64.rps:.0f} {'OK' if s64.rps >= 400 else 'MISSED'}")
    print(f"  no errors: {errors} {'OK' if errors == 0 else 'MISSED'}")


if __name__ == "__main__":
    raise SystemExit(main())

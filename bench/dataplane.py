"""What the sealed data plane's extra hop costs: ``.venv/bin/python -m bench.dataplane
[--runs 5] [--duration 2] [--concurrency 1,64] [--modes plain,stream]``.

What runs: the mock engine (no token delay, 32-token answers); the agent's TLS front before it
(``agent.front``, in a process of its own on the agent's event loop, as on a machine: it checks
the engine secret, forwards, relays); one gateway (``python -m apps.gateway``, one worker,
governance off: the hop is what differs, not the key's checks) in front of two model codes of
two organizations, both called ``bench-bot``: one instance dialed directly (plain HTTP to the
engine), one sealed (https to the front, pinned to its certificate). This reuses
``bench.gateway``'s load generator and database set-up.

Method: ``--runs`` interleaved runs; in each, every cell (plain and streamed; each concurrency)
is measured on the four targets one after the other: the engine alone, the front alone (the
bare hop), the gateway dialing the engine, the gateway dialing the front. The table gives
medians over the runs of p50 latency, time to first byte and req/s, and the added p50 and TTFT
of the hop (target minus its unsealed twin of the same run, median over runs) and the req/s
ratio. No pinning of cores: everything shares the machine, as the targets do alike.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import secrets
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from bench.gateway import (
    ROOT,
    Runs,
    _cpu_s,
    _create_database,
    _drop_database,
    _free_port,
    _run,
    _setup_data,
    _start_gateway,
    _start_redis,
    _uv_run,
    _wait_http,
)

PAIRS = (("front", "engine"), ("gateway-sealed", "gateway-direct"))


def _serve_front(port: int, upstream: int, state_dir: str) -> None:
    """The front alone, as the agent runs it (``--serve-front``)."""
    from agent.cli import run_loop
    from agent.front import EngineFront
    from agent.tls_identity import load_or_create

    tls = load_or_create(Path(state_dir))

    async def serve() -> int:
        front = EngineFront(
            host="127.0.0.1",
            port=port,
            api_key=os.environ["BENCH_ENGINE_SECRET"],
            upstream_port=upstream,
            tls=tls,
        )
        await front.start()
        await asyncio.Event().wait()
        return 0

    run_loop(serve())  # the agent's own loop


def _sealed_org(front_port: int, engine_secret: str, fingerprint: str) -> str:
    """A second organization whose ``bench-bot`` has one sealed instance; returns its key."""
    from django.utils import timezone

    from apps.accounts.models import Organization
    from apps.gateway.services import api_key_create
    from apps.instances.models import Instance, Provider
    from apps.models.models import LlmModel
    from inventiv.crypto import encrypt

    org = Organization.objects.create(name="Sealed", slug="sealed")
    model = LlmModel.objects.create(
        organization=org, name="bench-bot", engine="mock", model_id="mock/bench", status="active"
    )
    now = timezone.now()
    Instance.objects.create(
        organization=org,
        llm_model=model,
        provider=Provider.objects.get(name="bench"),
        status="ready",
        status_changed_at=now,
        ready_at=now,
        engine_host="127.0.0.1",
        engine_port=front_port,
        engine_secret_encrypted=encrypt(engine_secret),
        tls_fingerprint=fingerprint,
    )
    return api_key_create(organization=org, name="sealed")[1]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.dataplane", description=__doc__)
    parser.add_argument("--duration", type=float, default=2.0, help="seconds per cell")
    parser.add_argument("--runs", type=int, default=5, help="interleaved runs (medians)")
    parser.add_argument("--max-tokens", type=int, default=32)
    parser.add_argument("--concurrency", default="1,64")
    parser.add_argument("--modes", default="plain,stream")
    parser.add_argument("--serve-front", nargs=3, metavar=("PORT", "UPSTREAM", "DIR"))
    args = parser.parse_args(argv)
    if args.serve_front:
        port, upstream, state_dir = args.serve_front
        _serve_front(int(port), int(upstream), state_dir)
        return 0
    levels = [int(c) for c in args.concurrency.split(",")]
    modes = [m == "stream" for m in args.modes.split(",")]

    import aiohttp

    server_url = os.environ.get("DATABASE_URL") or "postgres://postgres@127.0.0.1:5432/postgres"
    work = Path(tempfile.mkdtemp(prefix="bench-dataplane-"))
    redis_proc, redis_url = _start_redis(work, None)
    procs: list[subprocess.Popen[bytes]] = [redis_proc]
    database_url = _create_database(server_url)
    engine_secret = secrets.token_urlsafe(24)
    env = {
        **os.environ,
        "DJANGO_SETTINGS_MODULE": "inventiv.settings",
        "DATABASE_URL": database_url,
        "REDIS_URL": redis_url,
        "INVENTIV_REDIS_PREFIX": f"bench-{secrets.token_hex(3)}:",
        "SECRET_KEY": os.environ.get("SECRET_KEY") or secrets.token_urlsafe(32),
        "LOG_LEVEL": "WARNING",
        "PYTHONPATH": str(ROOT),
    }
    shared = ("DATABASE_URL", "REDIS_URL", "INVENTIV_REDIS_PREFIX", "SECRET_KEY", "LOG_LEVEL")
    os.environ.update({k: env[k] for k in (*shared, "DJANGO_SETTINGS_MODULE")})
    engine_port, front_port = _free_port(), _free_port()
    try:
        engine = subprocess.Popen(
            [
                *(sys.executable, "-m", "agent.mock_engine", "--port", str(engine_port)),
                *("--served-model-name", "bench-bot", "--model-id", "mock/bench"),
                *("--default-max-tokens", str(args.max_tokens)),
            ],
            cwd=ROOT,
            env={**env, "MOCK_ENGINE_API_KEY": engine_secret},
        )
        procs.append(engine)
        _wait_http(f"http://127.0.0.1:{engine_port}/health", engine)
        front = subprocess.Popen(
            [
                *(sys.executable, "-m", "bench.dataplane", "--serve-front"),
                *(str(front_port), str(engine_port), str(work)),
            ],
            cwd=ROOT,
            env={**env, "BENCH_ENGINE_SECRET": engine_secret},
        )
        procs.append(front)
        from agent.tls_identity import load_or_create

        deadline = time.monotonic() + 30
        while not (work / "tls" / "cert.pem").exists() and time.monotonic() < deadline:
            time.sleep(0.05)
        fingerprint = load_or_create(work).fingerprint
        pin = aiohttp.Fingerprint(bytes.fromhex(fingerprint))
        direct_key = _setup_data(engine_port, engine_secret, governance=False)
        sealed_key = _sealed_org(front_port, engine_secret, fingerprint)
        gateway = _start_gateway("uvicorn", 1, env, None)
        procs.append(gateway.proc)
        gateway_cpu = lambda: _cpu_s(gateway.proc.pid)  # noqa: E731
        front_cpu = lambda: _cpu_s(front.pid)  # noqa: E731
        chat = "/v1/chat/completions"
        targets: list[tuple[str, str, str, Any, Any]] = [
            ("engine", f"http://127.0.0.1:{engine_port}{chat}", engine_secret, True, None),
            ("front", f"https://127.0.0.1:{front_port}{chat}", engine_secret, pin, front_cpu),
            ("gateway-direct", f"{gateway.url}{chat}", direct_key, True, gateway_cpu),
            ("gateway-sealed", f"{gateway.url}{chat}", sealed_key, True, gateway_cpu),
        ]
        runs = Runs()
        errors: dict[str, int] = {}
        for _ in range(args.runs):
            for stream in modes:
                for concurrency in levels:
                    for name, url, token, ssl, cpu in targets:
                        result = _uv_run(
                            _run(
                                url,
                                token,
                                stream=stream,
                                concurrency=concurrency,
                                duration=args.duration,
                                max_tokens=args.max_tokens,
                                cpu=cpu,
                                ssl=ssl,
                            )
                        )
                        runs.add((stream, concurrency), name, result)
                        errors[name] = errors.get(name, 0) + result.errors
        _print(runs, args, modes, levels, [t[0] for t in targets], errors)
    finally:
        for proc in reversed(procs):
            proc.terminate()
        for proc in procs:
            try:
                proc.wait(20)
            except subprocess.TimeoutExpired:
                proc.kill()
        from django.db import connections

        connections.close_all()
        _drop_database(server_url, database_url)
    return 0


def _print(
    runs: Runs,
    args: argparse.Namespace,
    modes: list[bool],
    levels: list[int],
    names: list[str],
    errors: dict[str, int],
) -> None:
    print(
        f"\nSealed data plane: {args.runs} interleaved runs x {args.duration:g} s per cell, "
        f"{args.max_tokens}-token answers, medians over runs (cores: {os.cpu_count()})\n"
    )
    print(
        f"{'mode':<7}{'conc':>5}  {'target':<16}{'req/s':>9}{'p50 ms':>9}{'ttft50 ms':>11}"
        f"{'CPU us/req':>12}"
    )
    for stream in modes:
        for c in levels:
            cell = (stream, c)
            for name in names:
                rps = runs.med(cell, name, lambda r: r.rps)
                p50 = runs.med(cell, name, lambda r: r.p50)
                ttft = runs.med(cell, name, lambda r: r.ttft50)
                cpu = runs.med(cell, name, lambda r: r.cpu_s / r.count * 1e6 if r.count else 0)
                mode = "stream" if stream else "plain"
                shown = f"{cpu:>12.0f}" if name != "engine" else f"{'':>12}"
                print(f"{mode:<7}{c:>5}  {name:<16}{rps:>9.0f}{p50:>9.2f}{ttft:>11.2f}{shown}")
    print(
        "\nCPU us/req: the gateway's processes' CPU per request (the front's for 'front'), from"
        " /proc over the measured window: on a real deployment the front runs on the GPU"
        " machine, and the gateway's own extra CPU (TLS to the front) is what its host pays."
    )
    print("\nThe hop: sealed minus its direct twin (same run, median over runs)")
    print(
        f"{'mode':<7}{'conc':>5}  {'pair':<34}{'+p50 ms':>9}{'+ttft ms':>10}{'req/s ratio':>13}"
        f"{'+gw CPU us/req':>16}"
    )
    for stream in modes:
        for c in levels:
            cell = (stream, c)
            for sealed, direct in PAIRS:
                pairs = list(zip(runs.by[(cell, sealed)], runs.by[(cell, direct)], strict=True))
                added = statistics.median(s.p50 - d.p50 for s, d in pairs)
                added_ttft = statistics.median(s.ttft50 - d.ttft50 for s, d in pairs)
                ratio = statistics.median(s.rps / d.rps for s, d in pairs if d.rps)
                cpu = ""
                if sealed == "gateway-sealed":
                    extra = statistics.median(
                        (s.cpu_s / s.count - d.cpu_s / d.count) * 1e6
                        for s, d in pairs
                        if s.count and d.count
                    )
                    cpu = f"{extra:>+16.0f}"
                mode = "stream" if stream else "plain"
                label = f"{sealed} vs {direct}"
                print(
                    f"{mode:<7}{c:>5}  {label:<34}{added:>+9.2f}{added_ttft:>+10.2f}{ratio:>13.2f}"
                    + cpu
                )
    print(f"\nErrors: {errors}")


if __name__ == "__main__":
    raise SystemExit(main())

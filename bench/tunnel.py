"""What the tunnel to a host behind NAT costs (issue 12):
``.venv/bin/python -m bench.tunnel [--runs 3] [--duration 2]``.

One mock engine (fast mode, 32-token answers) and one standalone gateway (one worker), on a
throw-away PostgreSQL database and a private Redis, as ``bench.gateway`` sets them up (its
functions are reused). Two organizations each have a model code ``bench-bot`` served by that
same engine: the first's instance is dialed direct, the second's sits on an on-premise host
whose reachability is ``tunnel``, so the gateway reaches it only through the tunnel an agent
process (``agent.tunnel.TunnelClient``, the instance's credential) keeps open to it. Both
keys go through the same gateway process, so the only difference is the tunnel hop.

Method: ``--runs`` interleaved runs; in each, every cell (plain and streamed, concurrency 1,
16, 64) is measured on the engine direct, through the gateway direct, and through the gateway
and the tunnel, one after the other (each run starting with another of the three). The table
prints medians over the runs: p50 latency, the p50 the tunnel adds over the gateway direct
(median of the per-run differences) and req/s with the ratio tunnel / gateway direct.
Placement (2 cores or more): the gateway on core 0, the engine, the tunnel's agent, Redis and
this load generator on core 1.
"""

from __future__ import annotations

import argparse
import os
import secrets
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from bench.gateway import (
    CONCURRENCY,
    DEFAULT_DATABASE_URL,
    ROOT,
    Result,
    _create_database,
    _drop_database,
    _flush_usage,
    _pinned,
    _run,
    _start_gateway,
    _start_redis,
    _uv_run,
    _wait_http,
)

TARGETS = ("engine", "gateway", "tunnel")

_AGENT = """
import asyncio, sys
from agent.tunnel import TunnelClient

async def main():
    client = TunnelClient(sys.argv[1], credential=sys.argv[2], instance_id=sys.argv[3],
                          engine_port=int(sys.argv[4]))
    client.start()
    await asyncio.Event().wait()

asyncio.run(main())
"""


def _setup(engine_port: int, engine_secret: str) -> tuple[str, str, str, str]:
    """Two organizations with a ready ``bench-bot`` each on the same engine, the second's on a
    tunneled on-premise host. Returns (direct key, tunnel key, tunneled instance id, its agent
    credential)."""
    import django

    django.setup()
    from django.core.management import call_command
    from django.utils import timezone

    call_command("migrate", verbosity=0, interactive=False)
    from apps.accounts.models import Organization
    from apps.accounts.services import user_create
    from apps.gateway.services import api_key_create
    from apps.instances.models import Instance, OnPremAssignment, OnPremHost, Provider
    from apps.models.models import LlmModel
    from inventiv import crypto

    now = timezone.now()
    keys: list[str] = []
    tunneled = None
    credential = crypto.new_token("ivc_")
    for index, kind in enumerate(("local", "onprem")):
        user = user_create(email=f"bench{index}@example.com", password="bench-password-9")
        org = Organization.objects.get(memberships__user=user)
        model = LlmModel.objects.create(
            organization=org, name="bench-bot", engine="mock", model_id="mock/bench",
            status="active",
        )  # fmt: skip
        provider, _ = Provider.objects.get_or_create(name=f"bench-{kind}", defaults={"kind": kind})
        instance = Instance.objects.create(
            organization=org, llm_model=model, provider=provider, status="ready",
            status_changed_at=now, ready_at=now, engine_host="127.0.0.1",
            engine_port=engine_port, engine_secret_encrypted=crypto.encrypt(engine_secret),
        )  # fmt: skip
        if kind == "onprem":
            host = OnPremHost.objects.create(
                provider=provider, name="nat-box", reachability="tunnel"
            )
            OnPremAssignment.objects.create(
                host=host, instance=instance, engine_port=engine_port, state="running"
            )
            Instance.objects.filter(id=instance.id).update(
                credential_hash=crypto.token_hash(credential)
            )
            tunneled = instance
        keys.append(api_key_create(organization=org, name=f"bench-{kind}")[1])
    assert tunneled is not None
    return keys[0], keys[1], str(tunneled.id), credential


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.tunnel", description=__doc__)
    parser.add_argument("--duration", type=float, default=2.0, help="seconds per cell")
    parser.add_argument("--runs", type=int, default=3, help="interleaved runs (medians)")
    parser.add_argument("--max-tokens", type=int, default=32)
    parser.add_argument("--concurrency", default=",".join(map(str, CONCURRENCY)))
    args = parser.parse_args(argv)
    levels = [int(c) for c in args.concurrency.split(",")]
    two_cores = len(os.sched_getaffinity(0)) >= 2
    side = {1} if two_cores else None

    server_url = os.environ.get("DATABASE_URL") or DEFAULT_DATABASE_URL
    procs: list[subprocess.Popen[bytes]] = []
    redis_proc, redis_url = _start_redis(Path(tempfile.mkdtemp(prefix="bench-tunnel-")), side)
    procs.append(redis_proc)
    database_url = _create_database(server_url)
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
    from bench.gateway import _free_port

    engine_port = _free_port()
    engine_secret = secrets.token_urlsafe(24)
    try:
        engine = subprocess.Popen(
            [sys.executable, "-m", "agent.mock_engine", "--port", str(engine_port),
             "--served-model-name", "bench-bot", "--model-id", "mock/bench",
             "--default-max-tokens", str(args.max_tokens)],
            cwd=ROOT, env={**env, "MOCK_ENGINE_API_KEY": engine_secret},
            preexec_fn=_pinned(side),
        )  # fmt: skip
        procs.append(engine)
        if two_cores:
            os.sched_setaffinity(0, {1})
        _wait_http(f"http://127.0.0.1:{engine_port}/health", engine)
        direct_key, tunnel_key, instance_id, credential = _setup(engine_port, engine_secret)
        gateway = _start_gateway("uvicorn", 1, env, {0} if two_cores else None)
        procs.append(gateway.proc)
        agent = subprocess.Popen(
            [sys.executable, "-c", _AGENT, gateway.url, credential, instance_id, str(engine_port)],
            cwd=ROOT, env=env, preexec_fn=_pinned(side),
        )  # fmt: skip
        procs.append(agent)
        _wait_tunnel(gateway.url, tunnel_key)
        _flush_usage()
        targets = {
            "engine": (f"http://127.0.0.1:{engine_port}/v1/chat/completions", engine_secret),
            "gateway": (f"{gateway.url}/v1/chat/completions", direct_key),
            "tunnel": (f"{gateway.url}/v1/chat/completions", tunnel_key),
        }
        results: dict[tuple[bool, int, str], list[Result]] = {}
        for run in range(args.runs):
            # Each run starts with another target, so that no target always follows the same.
            order = TARGETS[run % 3 :] + TARGETS[: run % 3]
            for stream in (False, True):
                for concurrency in levels:
                    for name in order:
                        url, token = targets[name]
                        result = _uv_run(
                            _run(url, token, stream=stream, concurrency=concurrency,
                                 duration=args.duration, max_tokens=args.max_tokens, cpu=None)
                        )  # fmt: skip
                        results.setdefault((stream, concurrency, name), []).append(result)
                        _flush_usage()
        _print(results, levels, args)
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


def _wait_tunnel(url: str, key: str, timeout: float = 30.0) -> None:
    """Until a request with the tunneled organization's key is answered (tunnel up, routed)."""
    import httpx

    deadline = time.monotonic() + timeout
    body = {"model": "bench-bot", "messages": [{"role": "user", "content": "hi"}]}
    while time.monotonic() < deadline:
        answer = httpx.post(
            f"{url}/v1/chat/completions",
            json=body,
            headers={"Authorization": f"Bearer {key}"},
            timeout=5,
        )
        if answer.status_code == 200:
            return
        time.sleep(0.2)
    raise SystemExit("the tunnel never served a request")


def _print(
    results: dict[tuple[bool, int, str], list[Result]], levels: list[int], args: argparse.Namespace
) -> None:
    def med(values: list[float]) -> float:
        return statistics.median(values)

    print(
        f"\nTunnel hop vs direct: one gateway worker, medians of {args.runs} runs x "
        f"{args.duration:g} s per cell, {args.max_tokens}-token answers"
    )
    header = (
        f"{'mode':<7}{'c':>4} | {'p50 ms: engine':>15}{'gateway':>9}{'tunnel':>8}"
        f"{'added':>8} | {'req/s: engine':>14}{'gateway':>9}{'tunnel':>8}{'ratio':>7} | errors"
    )
    print(header)
    print("-" * len(header))
    for stream in (False, True):
        for c in levels:
            runs = {name: results[(stream, c, name)] for name in TARGETS}
            p50 = {name: med([r.p50 for r in rs]) for name, rs in runs.items()}
            rps = {name: med([r.rps for r in rs]) for name, rs in runs.items()}
            added = med(
                [t.p50 - g.p50 for t, g in zip(runs["tunnel"], runs["gateway"], strict=True)]
            )
            errors = sum(r.errors for rs in runs.values() for r in rs)
            print(
                f"{'stream' if stream else 'plain':<7}{c:>4} | {p50['engine']:>15.2f}"
                f"{p50['gateway']:>9.2f}{p50['tunnel']:>8.2f}{added:>+8.2f} | "
                f"{rps['engine']:>14.0f}{rps['gateway']:>9.0f}{rps['tunnel']:>8.0f}"
                f"{rps['tunnel'] / rps['gateway']:>7.2f} | {errors}"
            )
    print(
        "\nadded = tunnel p50 - gateway-direct p50 (median of the per-run differences); "
        "ratio = tunnel req/s / gateway-direct req/s."
    )


if __name__ == "__main__":
    raise SystemExit(main())

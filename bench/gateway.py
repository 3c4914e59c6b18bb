"""Gateway benchmark, governance on as in production:
``.venv/bin/python -m bench.gateway [--runs 3] [--duration 2] [--workers 1,2] [--servers uvicorn]``.

What runs: the mock engine in fast mode (no token delay, 32-token answers) and, in front of it,
one standalone gateway per (server, worker count) asked for, on production settings: a
throw-away PostgreSQL database (on the server of ``DATABASE_URL``, default the local one) and
Redis (``REDIS_URL``, default the local one, under a throw-away prefix). The key has rate limits
(requests, tokens and concurrency per minute, high enough never to refuse) and a monthly budget,
its organization a budget too, and the model code a price: every request goes through the
rate-limit and budget scripts, reserves and settles, and writes its usage ahead to the Redis
stream, as in production. Between cells the bench flushes that stream into PostgreSQL (the
worker's ``usage_flush``), so Redis stays small and the measured cells are not disturbed.

Placement (2 cores or more): a one-worker gateway alone on core 0; the engine and this load
generator (aiohttp on uvloop) on core 1; a two-worker gateway on cores 0 and 1 (so it shares
core 1 with the engine and the load generator: on a 2-core machine its throughput is bound by
them; its CPU per request says what it would do on its own cores).

Method: ``--runs`` interleaved runs; in each, every cell (plain and streamed, concurrency 1, 16,
64) is measured direct-to-engine and through each gateway one after the other, so that noise
from other work on the machine hits all targets alike. The tables print medians over the runs
(and the spread of req/s), p50/p99 latency, time to first byte (TTFT), the added latency and
TTFT (gateway minus direct of the same run, median over runs), the gateway's CPU per request
(from /proc, all of its processes) and the requests per second one core could serve at that
CPU cost, the CPU per relayed SSE event, and the issue's targets. ``--profile DIR`` records
every gateway with py-spy (``--nonblocking``, raw collapsed stacks) while the runs go on;
``--attach CMD`` runs another tool on each gateway (``perf record -p {pid} ...``).
``--baseline DIR`` also starts the gateway of another source tree (``git archive <commit> |
tar -x -C DIR``) with the same settings, measured interleaved with this tree's: before/after
ratios from one run. Figures: docs/gateway.md, "Benchmark".
"""

from __future__ import annotations

import argparse
import asyncio
import os
import secrets
import shlex
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
CONCURRENCY = (1, 16, 64)
DEFAULT_DATABASE_URL = "postgres://postgres@127.0.0.1:5432/postgres"
# Limits high enough never to refuse at the rates measured here, low enough to be real.
RPM, TPM, CONCURRENT = 100_000_000, 2_000_000_000, 10_000
CLK_TCK = os.sysconf("SC_CLK_TCK")


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def _wait_http(url: str, proc: subprocess.Popen[bytes], timeout: float = 60) -> None:
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


# --- the control data ---------------------------------------------------------------------------


def _create_database(server_url: str) -> str:
    """A throw-away database on the server of ``server_url``; returns its URL."""
    import psycopg

    name = f"bench_gateway_{secrets.token_hex(4)}"
    with psycopg.connect(server_url, autocommit=True) as conn:
        conn.execute(f'CREATE DATABASE "{name}"')
    return server_url.rsplit("/", 1)[0] + "/" + name


def _drop_database(server_url: str, url: str) -> None:
    import psycopg

    name = url.rsplit("/", 1)[1]
    with psycopg.connect(server_url, autocommit=True) as conn:
        conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


def _setup_data(engine_port: int, engine_secret: str, governance: bool) -> str:
    """Organization, priced model code, ready instance, a key with rate limits, budgets on the
    key and the organization, all published to the gateways' Redis counters; returns the key.
    Without ``governance``: no limits, no budget, no price (usage is still recorded)."""
    import django

    django.setup()
    from django.core.management import call_command
    from django.utils import timezone

    call_command("migrate", verbosity=0, interactive=False)
    from apps.accounts.models import Organization
    from apps.accounts.services import user_create
    from apps.billing.services import price_set
    from apps.billing.services.budgets import budget_set, budgets_enforce
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
    if not governance:
        return api_key_create(organization=org, name="bench")[1]
    api_key, key = api_key_create(
        organization=org, name="bench", rpm_limit=RPM, tpm_limit=TPM, concurrency_limit=CONCURRENT
    )
    price_set(model_code=model, currency="EUR", input_per_million="0.5", output_per_million="1.5")
    budget_set(organization=org, currency="EUR", monthly_limit="1000000")
    budget_set(organization=org, api_key=api_key, currency="EUR", monthly_limit="900000")
    budgets_enforce(rollup=False)  # what the beat's budget pass publishes
    return key


def _flush_usage() -> int:
    from apps.billing.services import usage_flush

    total = 0
    while True:
        moved = usage_flush(max_batches=200)
        total += moved
        if not moved:
            return total


def _usage_check() -> tuple[int, int, int]:
    """(records in the database, spend counted by the key's budget counter in pico, the
    records' cost in pico at the published price)."""
    from django.db.models import Sum

    from apps.billing.models import UsageRecord
    from apps.gateway.budget import budget_control, period_of
    from apps.gateway.models import ApiKey

    key = ApiKey.objects.get(name="bench")
    totals = UsageRecord.objects.aggregate(p=Sum("prompt_tokens"), c=Sum("completion_tokens"))
    cost = (totals["p"] or 0) * 500_000 + (totals["c"] or 0) * 1_500_000
    spent, _ = budget_control().spent("key", key.id, period_of())
    return UsageRecord.objects.count(), spent, cost


# --- processes ----------------------------------------------------------------------------------


def _start_redis(directory: Path, cores: set[int] | None) -> tuple[subprocess.Popen[bytes], str]:
    """A private redis-server persisting as compose's (AOF, fsync every second)."""
    import redis

    exe = shutil.which("redis-server")
    if exe is None:
        raise SystemExit("redis-server is needed (or pass --redis-url)")
    port = _free_port()
    proc = subprocess.Popen(
        [
            exe,
            "--port",
            str(port),
            "--bind",
            "127.0.0.1",
            "--dir",
            str(directory),
            "--appendonly",
            "yes",
            "--appendfsync",
            "everysec",
            "--save",
            "",
            "--protected-mode",
            "no",
            "--loglevel",
            "warning",
        ],
        stdout=subprocess.DEVNULL,
        preexec_fn=_pinned(cores),
    )
    url = f"redis://127.0.0.1:{port}/0"
    client = redis.Redis.from_url(url, socket_timeout=1)
    deadline = time.monotonic() + 10
    while True:
        try:
            client.ping()
            break
        except redis.RedisError:
            if time.monotonic() > deadline:
                raise
            time.sleep(0.05)
    client.close()
    return proc, url


def _pinned(cores: set[int] | None) -> Callable[[], None] | None:
    if cores is None:
        return None
    return lambda: os.sched_setaffinity(0, cores)


def _tree(pid: int) -> list[int]:
    """``pid`` and its descendants."""
    out, todo = [], [pid]
    while todo:
        current = todo.pop()
        out.append(current)
        for task in Path(f"/proc/{current}/task").glob("*"):
            try:
                todo.extend(int(c) for c in (task / "children").read_text().split())
            except OSError:
                continue
    return out


def _cpu_s(pid: int) -> float:
    """CPU seconds (user + system) used so far by ``pid`` and its descendants."""
    total = 0
    for p in _tree(pid):
        try:
            fields = Path(f"/proc/{p}/stat").read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        total += int(fields[11]) + int(fields[12])  # utime, stime
    return total / CLK_TCK


@dataclass
class Gateway:
    name: str
    server: str
    workers: int
    proc: subprocess.Popen[bytes]
    url: str


def _start_gateway(
    server: str,
    workers: int,
    env: dict[str, str],
    cores: set[int] | None,
    root: Path = ROOT,
    prefix: str = "",
) -> Gateway:
    port = _free_port()
    env = {**env, "PYTHONPATH": str(root)}
    if server == "uvicorn":  # the standalone command, as compose runs it
        args = [sys.executable, "-m", "apps.gateway", "--host", "127.0.0.1", "--port", str(port)]
        args += ["--workers", str(workers)]
    else:  # granian (dev requirements), with the same application, lifespan and options
        granian = str(Path(sys.executable).with_name("granian"))
        args = [granian, "--interface", "asgi", "--host", "127.0.0.1", "--port", str(port)]
        args += ["--workers", str(workers), "--loop", "uvloop", "--http", "1", "--no-ws"]
        args += ["--log-level", "warning", "--no-access-log", "apps.gateway.asgi:application"]
    proc = subprocess.Popen(args, cwd=root, env=env, preexec_fn=_pinned(cores))
    url = f"http://127.0.0.1:{port}"
    _wait_http(url + "/healthz", proc)
    name = f"{prefix}{server[:3]}-w{workers}" if prefix else f"{server}-w{workers}"
    return Gateway(name, server, workers, proc, url)


# --- the load generator -------------------------------------------------------------------------


@dataclass
class Result:
    rps: float
    p50: float
    p99: float
    ttft50: float
    ttft99: float
    errors: int
    count: int
    events: int  # SSE events received (streams)
    cpu_s: float  # the gateway's CPU seconds over the measured window (0 for direct)
    sent: int  # requests sent, warm-up included (usage records expected)


def _pct(values: list[float], q: float) -> float:
    if not values:
        return float("nan")
    values = sorted(values)
    return values[min(len(values) - 1, int(q * len(values)))]


async def _run(
    url: str,
    token: str,
    *,
    stream: bool,
    concurrency: int,
    duration: float,
    max_tokens: int,
    cpu: Callable[[], float] | None,
    ssl: Any = True,  # aiohttp's: bench.dataplane pins the agent front's certificate
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
    headers = {"Authorization": f"Bearer {token}", "Content-Type": "application/json"}
    latencies: list[float] = []
    ttfts: list[float] = []
    errors = events = sent = 0
    connector = aiohttp.TCPConnector(limit=concurrency + 4)
    async with aiohttp.ClientSession(connector=connector) as session:

        async def one(record: bool) -> None:
            nonlocal errors, events, sent
            sent += 1
            start = time.perf_counter()
            seen = 0
            try:
                async with session.post(url, data=body, headers=headers, ssl=ssl) as resp:
                    first = None
                    if stream:
                        async for data in resp.content.iter_any():
                            if first is None:
                                first = time.perf_counter()
                            seen += data.count(b"\n\n")
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
            events += seen
            latencies.append(end - start)
            ttfts.append((first or end) - start)

        async def worker(deadline: float, record: bool) -> None:
            while time.perf_counter() < deadline:
                await one(record)

        warm = time.perf_counter() + min(1.0, duration / 3)
        await asyncio.gather(*[worker(warm, False) for _ in range(concurrency)])
        cpu0 = cpu() if cpu else 0.0
        start = time.perf_counter()
        deadline = start + duration
        await asyncio.gather(*[worker(deadline, True) for _ in range(concurrency)])
        elapsed = time.perf_counter() - start
        cpu_s = (cpu() - cpu0) if cpu else 0.0
    return Result(
        rps=len(latencies) / elapsed,
        p50=_pct(latencies, 0.5) * 1000,
        p99=_pct(latencies, 0.99) * 1000,
        ttft50=_pct(ttfts, 0.5) * 1000,
        ttft99=_pct(ttfts, 0.99) * 1000,
        errors=errors,
        count=len(latencies),
        events=events,
        cpu_s=cpu_s,
        sent=sent,
    )


# --- the run --------------------------------------------------------------------------------------

Cell = tuple[bool, int]  # (stream, concurrency)


@dataclass
class Runs:
    """Every run's result per (cell, target)."""

    by: dict[tuple[Cell, str], list[Result]] = field(default_factory=dict)

    def add(self, cell: Cell, target: str, result: Result) -> None:
        self.by.setdefault((cell, target), []).append(result)

    def med(self, cell: Cell, target: str, value: Callable[[Result], float]) -> float:
        return statistics.median(value(r) for r in self.by[(cell, target)])

    def added(self, cell: Cell, target: str, value: Callable[[Result], float]) -> float:
        """Median over runs of (target − direct) of the same run."""
        pairs = zip(self.by[(cell, target)], self.by[(cell, "direct")], strict=True)
        return statistics.median(value(g) - value(d) for g, d in pairs)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.gateway", description=__doc__)
    parser.add_argument("--duration", type=float, default=2.0, help="seconds per cell")
    parser.add_argument("--runs", type=int, default=3, help="interleaved runs (medians)")
    parser.add_argument("--max-tokens", type=int, default=32)
    parser.add_argument("--workers", default="1,2", help="gateway worker counts, e.g. 1,2")
    parser.add_argument(
        "--servers", default="uvicorn", help="uvicorn (python -m apps.gateway) and/or granian"
    )
    parser.add_argument("--concurrency", default=",".join(map(str, CONCURRENCY)))
    parser.add_argument("--modes", default="plain,stream")
    parser.add_argument("--profile", metavar="DIR", help="py-spy record every gateway into DIR")
    parser.add_argument(
        "--baseline",
        metavar="DIR",
        help="also measure the gateway of this source tree (another commit: `git archive "
        "<commit> | tar -x -C DIR`), named base-uvi-w1 etc., interleaved with this tree's",
    )
    parser.add_argument(
        "--attach",
        metavar="CMD",
        help="run CMD on every gateway while the runs go on, stopped with SIGINT; {pid} and "
        "{name} are replaced, e.g. 'perf stat -e task-clock,context-switches -p {pid} "
        "-o /tmp/{name}.txt'",
    )
    parser.add_argument(
        "--governance",
        choices=("on", "off"),
        default="on",
        help="off: a key with no limits and no budget, an unpriced model code",
    )
    parser.add_argument(
        "--redis-url",
        help="use this Redis (default: a private redis-server on the engine's core)",
    )
    args = parser.parse_args(argv)
    workers = [int(w) for w in args.workers.split(",")]
    servers = args.servers.split(",")
    levels = [int(c) for c in args.concurrency.split(",")]
    modes = [m == "stream" for m in args.modes.split(",")]

    two_cores = len(os.sched_getaffinity(0)) >= 2
    server_url = os.environ.get("DATABASE_URL") or DEFAULT_DATABASE_URL
    procs: list[subprocess.Popen[bytes]] = []
    redis_url = args.redis_url
    if not redis_url:
        redis_proc, redis_url = _start_redis(
            Path(tempfile.mkdtemp(prefix="bench-gateway-redis-")), {1} if two_cores else None
        )
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
    engine_port = _free_port()
    engine_secret = secrets.token_urlsafe(24)
    spies: list[subprocess.Popen[bytes]] = []
    gateways: list[Gateway] = []
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
            preexec_fn=_pinned({1} if two_cores else None),
        )
        procs.append(engine)
        if two_cores:
            os.sched_setaffinity(0, {1})
        _wait_http(f"http://127.0.0.1:{engine_port}/health", engine)
        key = _setup_data(engine_port, engine_secret, args.governance == "on")
        for server in servers:
            for count in workers:
                cores = ({0} if count == 1 else {0, 1}) if two_cores else None
                gateway = _start_gateway(server, count, env, cores)
                gateways.append(gateway)
                procs.append(gateway.proc)
                if args.baseline:
                    base = _start_gateway(
                        server, count, env, cores, Path(args.baseline).resolve(), "base-"
                    )
                    gateways.append(base)
                    procs.append(base.proc)
        if args.profile:
            spies = _profilers(gateways, Path(args.profile))
        if args.attach:
            for g in gateways:
                command = args.attach.format(pid=g.proc.pid, name=g.name)
                spies.append(subprocess.Popen(shlex.split(command)))
        _flush_usage()
        targets: list[tuple[str, str, str, Callable[[], float] | None]] = [
            ("direct", f"http://127.0.0.1:{engine_port}/v1/chat/completions", engine_secret, None)
        ]
        for g in gateways:
            targets.append(
                (g.name, f"{g.url}/v1/chat/completions", key, lambda pid=g.proc.pid: _cpu_s(pid))
            )
        runs = Runs()
        sent = 0
        for _ in range(args.runs):
            for stream in modes:
                for concurrency in levels:
                    for name, url, token, cpu in targets:
                        result = _uv_run(
                            _run(
                                url,
                                token,
                                stream=stream,
                                concurrency=concurrency,
                                duration=args.duration,
                                max_tokens=args.max_tokens,
                                cpu=cpu,
                            )
                        )
                        runs.add((stream, concurrency), name, result)
                        if name != "direct":
                            sent += result.sent
                            _flush_usage()
        time.sleep(0.5)
        _flush_usage()
        _print(runs, args, two_cores, [t[0] for t in targets[1:]], modes, levels)
        records, spent, cost = _usage_check()
        if args.governance == "off":
            cost = 0  # the model code is unpriced: its records cost nothing, nothing is settled
        print(
            f"\nExactness: {sent} requests sent to the gateways, {records} usage records in "
            f"PostgreSQL; key budget counter {spent / 1e12:.6f} EUR, records' cost "
            f"{cost / 1e12:.6f} EUR ({'equal' if spent == cost else 'DIFFERENT'})"
        )
    finally:
        for spy in spies:  # py-spy (and perf) write their output on SIGINT
            spy.send_signal(signal.SIGINT)
        for spy in spies:
            spy.wait(30)
        for proc in reversed(procs):  # gateways first (their usage), then engine and Redis
            proc.terminate()
            try:
                proc.wait(25)
            except subprocess.TimeoutExpired:
                proc.kill()
        if args.redis_url:
            _cleanup_redis(env)
        from django.db import connections

        connections.close_all()
        _drop_database(server_url, database_url)
    return 0


def _uv_run(coro: Any) -> Result:
    import uvloop

    return uvloop.run(coro)  # type: ignore[no-any-return]


def _profilers(gateways: list[Gateway], out: Path) -> list[subprocess.Popen[bytes]]:
    out.mkdir(parents=True, exist_ok=True)
    spy = Path(sys.executable).with_name("py-spy")
    procs = []
    for g in gateways:
        time.sleep(1.0)  # the workers are up
        target = g.proc.pid
        procs.append(
            subprocess.Popen(
                [
                    str(spy),
                    "record",
                    "--nonblocking",
                    "--subprocesses",
                    "--format",
                    "raw",
                    "--rate",
                    "500",
                    "--pid",
                    str(target),
                    "-o",
                    str(out / f"{g.name}.txt"),
                ],
                stdout=subprocess.DEVNULL,
                stderr=subprocess.DEVNULL,
                preexec_fn=_pinned({1}) if len(os.sched_getaffinity(0)) >= 2 else None,
            )
        )
    return procs


def _cleanup_redis(env: dict[str, str]) -> None:
    import redis

    client = redis.Redis.from_url(env["REDIS_URL"])
    keys = list(client.scan_iter(match=env["INVENTIV_REDIS_PREFIX"] + "*", count=1000))
    if keys:
        client.delete(*keys)


def _print(
    runs: Runs,
    args: argparse.Namespace,
    two_cores: bool,
    names: list[str],
    modes: list[bool],
    levels: list[int],
) -> None:
    pinning = (
        "1-worker gateways on core 0, 2-worker on cores 0-1, engine + load generator on core 1"
        if two_cores
        else "unpinned"
    )
    governance = (
        "governance on (rate limits, budgets, priced model"
        if args.governance == "on"
        else "governance off (no limits, no budget, unpriced"
    )
    print(
        f"\nGateway benchmark, {governance}, usage to Redis, PostgreSQL): {args.max_tokens}-token "
        f"answers, {args.duration:g} s per cell, medians of {args.runs} interleaved runs, "
        f"{pinning}\n"
    )
    print(
        "| mode   | conc | target       |  req/s (min-max)  | p50 ms | p99 ms | p99/p50 | "
        "TTFT p50 | +p50 ms | +p99 ms | +TTFT ms | CPU ms/req | req/s/core | errors |"
    )
    print(
        "|--------|-----:|--------------|------------------:|-------:|-------:|--------:|"
        "---------:|--------:|--------:|---------:|-----------:|-----------:|-------:|"
    )
    for stream in modes:
        for conc in levels:
            cell = (stream, conc)
            for name in ["direct", *names]:
                results = runs.by[(cell, name)]
                rps = runs.med(cell, name, lambda r: r.rps)
                spread = f"{min(r.rps for r in results):.0f}-{max(r.rps for r in results):.0f}"
                p50 = runs.med(cell, name, lambda r: r.p50)
                p99 = runs.med(cell, name, lambda r: r.p99)
                ttft = runs.med(cell, name, lambda r: r.ttft50)
                errors = sum(r.errors for r in results)
                if name == "direct":
                    extra = f"{'':>7} | {'':>7} | {'':>8} | {'':>10} | {'':>10}"
                else:
                    cpu = runs.med(cell, name, lambda r: r.cpu_s / max(1, r.count) * 1000)
                    extra = (
                        f"{runs.added(cell, name, lambda r: r.p50):>7.2f} | "
                        f"{runs.added(cell, name, lambda r: r.p99):>7.2f} | "
                        f"{runs.added(cell, name, lambda r: r.ttft50):>8.2f} | "
                        f"{cpu:>10.3f} | {1000 / cpu if cpu else 0:>10.0f}"
                    )
                print(
                    f"| {'stream' if stream else 'plain':6} | {conc:>4} | {name:12} | "
                    f"{rps:>6.0f} ({spread:>9}) | {p50:>6.2f} | {p99:>6.2f} | "
                    f"{p99 / p50 if p50 else 0:>7.2f} | {ttft:>8.2f} | {extra} | {errors:>6} |"
                )
    if True in modes and False in modes:
        print("\nCPU per relayed SSE event (streams, gateway CPU / events received):\n")
        print("| conc | target       | events/stream | CPU µs/event | marginal µs/event |")
        print("|-----:|--------------|--------------:|-------------:|------------------:|")
        for conc in levels:
            for name in names:
                s, p = (True, conc), (False, conc)
                per_stream = runs.med(s, name, lambda r: r.cpu_s / max(1, r.count) * 1e6)
                per_plain = runs.med(p, name, lambda r: r.cpu_s / max(1, r.count) * 1e6)
                events = runs.med(s, name, lambda r: r.events / max(1, r.count))
                print(
                    f"| {conc:>4} | {name:12} | {events:>13.1f} | "
                    f"{per_stream / events if events else 0:>12.2f} | "
                    f"{(per_stream - per_plain) / max(1, events - 1):>17.2f} |"
                )
    _targets(runs, names, modes, levels)


def _targets(runs: Runs, names: list[str], modes: list[bool], levels: list[int]) -> None:
    print("\nTargets (issue 14), per gateway:")
    for name in names:
        lines = []
        for stream in modes:
            for conc in (c for c in (16, 64) if c in levels):
                cell = (stream, conc)
                ratio = runs.med(cell, name, lambda r: r.p99 / r.p50)
                mode = "stream" if stream else "plain"
                lines.append(
                    f"p99/p50 {mode} c={conc} <= 2: {ratio:.2f} {'OK' if ratio <= 2 else 'MISSED'}"
                )
        if False in modes and 64 in levels:
            cell = (False, 64)
            rps = runs.med(cell, name, lambda r: r.rps)
            cpu = runs.med(cell, name, lambda r: r.cpu_s / max(1, r.count))
            errors = sum(
                r.errors for mode in modes for c in levels for r in runs.by[((mode, c), name)]
            )
            lines.append(
                f"plain c=64 >= 8000 req/s, 0 errors: {rps:.0f} req/s measured "
                f"({1 / cpu if cpu else 0:.0f} per core of gateway CPU), {errors} errors "
                f"{'OK' if rps >= 8000 and not errors else 'MISSED'}"
            )
        if False in modes and 1 in levels:
            added = runs.added((False, 1), name, lambda r: r.p99)
            lines.append(
                f"added p99 c=1 <= 0.3 ms: {added:.2f} {'OK' if added <= 0.3 else 'MISSED'}"
            )
        if True in modes and 1 in levels:
            added = runs.added((True, 1), name, lambda r: r.ttft50)
            lines.append(
                f"added TTFT c=1 <= 0.3 ms: {added:.2f} {'OK' if added <= 0.3 else 'MISSED'}"
            )
        print(f"  {name}:")
        for line in lines:
            print(f"    {line}")


if __name__ == "__main__":
    raise SystemExit(main())

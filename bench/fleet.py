"""The control plane at fleet scale (issue 19):
``.venv/bin/python -m bench.fleet [--sizes 1000,5000,10000] [--duration 6] [--runs 3]
[--heartbeats-only]`` (the last: only the fast path's heartbeat tables).

For each fleet size N, in a throw-away PostgreSQL database (on the server of ``DATABASE_URL``,
default the local one) and Redis (``REDIS_URL``) under a throw-away prefix, on production
settings (pool on, ``DJANGO_DEBUG=false``):

* N ready instances are seeded (one organization, N/5 model codes of 5 replicas, converged),
  each with its own agent credential;
* one web worker (``uvicorn inventiv.asgi:application --workers 1``, the compose command's
  HTTP protocol) is pinned to core 1 with ``taskset``; this process, the load generator, runs
  on core 0 (PostgreSQL and Redis float, as do the other users of the machine: noise);
* **heartbeats, open loop**: real heartbeat JSON (the agent's own ``Heartbeat`` model, its
  state, engine status and metrics, which differ from each beat to the agent's next as a
  serving engine's do, so every beat has them to write; the headers its httpx client sends)
  at the rate N agents make at the default 5 s interval on the two web cores the target plans,
  so one core's share, N/10 per second, round-robin over the N agents, for ``--duration``
  seconds, each beat at its scheduled time whatever the answers (latency counted from the
  scheduled time, so queueing shows). Twice: **pooled**, over 256 keep-alive connections
  opened before the clock starts (what a proxy in front of the web role keeps to a worker; a
  beat whose time has come and finds none idle waits for one, and that wait is counted); **per
  beat**, each beat on a new connection closed after its answer (agents connecting to the web
  role themselves: their httpx client keeps a connection 5 s, compose's web role 5 s, the
  interval is 5 s, so nearly every beat opens one). The load generator speaks HTTP/1.1 itself
  over asyncio protocols, and runs each load with its cyclic collector off, so that its own CPU
  and pauses (on core 0) do not delay the beats it schedules; then **capacity**: closed loop,
  64 in flight on 64 keep-alive connections, as fast as the worker answers;
* the same through Django's own ASGI handler (``django.core.asgi``, middleware and a thread
  per request: the way every heartbeat went before the fast path), as the baseline;
* database connections: ``pg_stat_activity`` of the bench database sampled every 50 ms during
  the load (max), against the worker's pool (``DATABASE_POOL_MAX_SIZE``, 8: Django's 6 and the
  heartbeat's 2 on the event loop);
* queries per heartbeat: in this process, the heartbeat's implementation called directly for
  a sample of agents in steady state (after a first beat), counted by Django;
* reconcile: a pass with nothing to change (``reconcile()``), its time and queries (median of
  ``--runs``), against the previous loop's cost (``model_code_converge`` for every deployed
  model code: what every pass did before) measured in the same run;
* routing: a gateway's full reload (``routing_snapshot`` + ``RoutingTable.replace``) against
  one instance event applied as a delta (``Directory.apply_instance_event``).

Medians over ``--runs`` for the timings; one table per measure, with the targets of the issue.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import gc
import itertools
import os
import secrets
import signal
import socket
import statistics
import subprocess
import sys
import threading
import time
from collections import deque
from collections.abc import Iterator
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
DEFAULT_DATABASE_URL = "postgres://postgres@127.0.0.1:5432/postgres"
INTERVAL_S = 5.0
WEB_CORES = 2
REPLICAS = 5
CAPACITY_CONCURRENCY = 64
# The open loop's keep-alive connections (pooled mode): what a proxy in front of the web role
# keeps to one worker; far more than the beats in flight at the target's latency (1,000/s for
# 50 ms: 50).
OPEN_LOOP_CONNECTIONS = 256
CLK_TCK = os.sysconf("SC_CLK_TCK")


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def _median(values: list[float]) -> float:
    return statistics.median(values) if values else float("nan")


def _pct(values: list[float], q: float) -> float:
    if not values:
        return float("nan")
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


# --- the database --------------------------------------------------------------------------


def _setup_environment(base_url: str, redis_url: str, db_name: str) -> dict[str, str]:
    head, _, _ = base_url.rpartition("/")
    env = dict(os.environ)
    env.update(
        DATABASE_URL=f"{head}/{db_name}",
        REDIS_URL=redis_url,
        INVENTIV_REDIS_PREFIX=f"fleetbench-{secrets.token_hex(3)}:",
        SECRET_KEY=secrets.token_urlsafe(50),
        DJANGO_DEBUG="false",
        ALLOWED_HOSTS="127.0.0.1,localhost",
        INVENTIV_TLS="off",
        LOG_LEVEL="WARNING",
        DJANGO_SETTINGS_MODULE="inventiv.settings",
    )
    env.pop("INVENTIV_TEST_DB_NAME", None)
    return env


def _create_database(base_url: str, db_name: str) -> None:
    import psycopg

    with psycopg.connect(base_url, autocommit=True) as conn:
        conn.execute(f'DROP DATABASE IF EXISTS "{db_name}" WITH (FORCE)')
        conn.execute(f'CREATE DATABASE "{db_name}"')


def _drop_database(base_url: str, db_name: str) -> None:
    import psycopg

    with psycopg.connect(base_url, autocommit=True) as conn:
        conn.execute(f'DROP DATABASE IF EXISTS "{db_name}" WITH (FORCE)')


def _connections(base_url: str, db_name: str) -> int:
    import psycopg

    with psycopg.connect(base_url, autocommit=True) as conn:
        row = conn.execute(
            "SELECT count(*) FROM pg_stat_activity WHERE datname = %s", (db_name,)
        ).fetchone()
    return int(row[0]) if row else 0


class ConnectionSampler:
    """The bench database's backends, sampled every 50 ms from one connection of its own
    (not counted: it sits on the server's maintenance database)."""

    def __init__(self, base_url: str, db_name: str) -> None:
        self.base_url, self.db_name = base_url, db_name
        self.samples: list[int] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        import psycopg

        with psycopg.connect(self.base_url, autocommit=True) as conn:
            while not self._stop.is_set():
                row = conn.execute(
                    "SELECT count(*) FROM pg_stat_activity WHERE datname = %s", (self.db_name,)
                ).fetchone()
                self.samples.append(int(row[0]) if row else 0)
                self._stop.wait(0.05)

    def __enter__(self) -> ConnectionSampler:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join(5)


# --- seeding -------------------------------------------------------------------------------


def _seed(n: int) -> list[tuple[str, str]]:
    """N ready instances of N/5 converged model codes; their (instance id, credential)."""
    from django.utils import timezone

    from apps.accounts.models import Organization
    from apps.instances.choices import InstanceStatus, ProviderKind
    from apps.instances.models import Instance, Provider
    from apps.models.choices import Engine, ModelStatus
    from apps.models.models import LlmModel
    from inventiv import crypto

    org, _ = Organization.objects.get_or_create(slug="fleet", defaults={"name": "Fleet"})
    provider, _ = Provider.objects.get_or_create(
        name="fleet-bench", defaults={"kind": ProviderKind.LOCAL}
    )
    now = timezone.now()
    codes = max(1, n // REPLICAS)
    LlmModel.objects.bulk_create(
        [
            LlmModel(
                organization=org,
                name=f"fleet-{i}",
                engine=Engine.MOCK,
                model_id="meta-llama/Llama-3.1-8B-Instruct",
                gpu_count=0,
                status=ModelStatus.ACTIVE,
                desired_replicas=REPLICAS,
                min_replicas=REPLICAS,
                max_replicas=REPLICAS,
                provider=provider,
            )
            for i in range(codes)
        ],
        batch_size=1000,
    )
    models = list(LlmModel.objects.filter(organization=org).order_by("id"))
    secret = crypto.encrypt("engine-secret")
    credentials: list[tuple[str, str]] = []
    rows = []
    for i in range(n):
        credential = f"ivc_fleet_{i}_{secrets.token_hex(8)}"
        instance = Instance(
            organization=org,
            llm_model=models[i % len(models)],
            provider=provider,
            status=InstanceStatus.READY,
            status_changed_at=now,
            engine_host=f"10.{i // 65536 % 256}.{i // 256 % 256}.{i % 256}",
            engine_port=8000,
            engine_secret_encrypted=secret,
            credential_hash=crypto.token_hash(credential),
            registered_at=now,
            last_heartbeat_at=now,
            agent_state="ready",
            agent_version=_agent_version(),
            engine_status=_engine_status(),
            ready_at=now,
        )
        rows.append(instance)
        credentials.append((str(instance.id), credential))
    Instance.objects.bulk_create(rows, batch_size=2000)
    return credentials


def _agent_version() -> str:
    import agent

    return str(agent.__version__)


def _engine_status() -> dict[str, Any]:
    from agent.protocol import EngineStatus

    return EngineStatus(healthy=True, model_listed=True, warmed_up=True, pid=4242).model_dump()


def _beat_body(instance_id: str, step: int = 0) -> bytes:
    """The JSON a ready agent sends (agent.protocol.Heartbeat, as ControlPlaneClient does);
    ``step`` 0 or 1: its engine's metrics of every other beat (a serving engine's metrics move
    from one beat to the next, so that every beat has them to write)."""
    from agent.protocol import AgentState, EngineMetrics, EngineStatus, GpuInfo, Heartbeat

    return (
        Heartbeat(
            instance_id=instance_id,
            agent_version=_agent_version(),
            state=AgentState.READY,
            engine=EngineStatus(healthy=True, model_listed=True, warmed_up=True, pid=4242),
            metrics=EngineMetrics(requests_running=step, kv_cache_usage=0.25 * step),
            gpus=[GpuInfo(name="NVIDIA L4", memory_mib=23034)],
        )
        .model_dump_json()
        .encode()
    )


# --- the web worker ------------------------------------------------------------------------


class Web:
    def __init__(self, env: dict[str, str], app: str, *, factory: bool = False) -> None:
        self.port = _free_port()
        command = [
            "taskset",
            "-c",
            "1",
            sys.executable,
            "-m",
            "uvicorn",
            app,
            "--host",
            "127.0.0.1",
            "--port",
            str(self.port),
            "--workers",
            "1",
            "--lifespan",
            "off",
            "--http",
            "apps.gateway.server:HttpProtocol",
            # As compose's web role (an idle connection closed after 5 s).
            "--timeout-keep-alive",
            "5",
            "--no-access-log",
            # As compose's web role: beyond it, 503 rather than an unbounded queue.
            "--limit-concurrency",
            "1024",
            "--log-level",
            "warning",
        ]
        if factory:
            command.insert(command.index(app), "--factory")
        self.proc = subprocess.Popen(command, cwd=ROOT, env=env, start_new_session=True)
        self.url = f"http://127.0.0.1:{self.port}"
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            try:
                with socket.create_connection(("127.0.0.1", self.port), timeout=0.2):
                    return
            except OSError:
                if self.proc.poll() is not None:
                    raise RuntimeError("the web worker exited") from None
                time.sleep(0.1)
        raise RuntimeError("the web worker did not start")

    def cpu_s(self) -> float:
        """CPU time (user + system) the worker used so far."""
        fields = Path(f"/proc/{self.proc.pid}/stat").read_text().rpartition(")")[2].split()
        return (int(fields[11]) + int(fields[12])) / CLK_TCK

    def stop(self) -> None:
        if self.proc.poll() is None:
            os.killpg(self.proc.pid, signal.SIGTERM)
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                os.killpg(self.proc.pid, signal.SIGKILL)
                self.proc.wait()


# --- load ----------------------------------------------------------------------------------
# The load generator speaks HTTP/1.1 itself over asyncio protocols (a request written whole, its
# answer read by Content-Length, which the worker always sends): a client library's own CPU on
# core 0 (aiohttp: several times this) would delay the beats it is meant to schedule.


class _Conn(asyncio.Protocol):
    """One keep-alive connection of the load generator, one request at a time."""

    def __init__(self) -> None:
        self.transport: asyncio.Transport | None = None
        self.buffer = bytearray()
        self.waiter: asyncio.Future[int] | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]

    def data_received(self, data: bytes) -> None:
        self.buffer += data
        head_end = self.buffer.find(b"\r\n\r\n")
        if head_end < 0:
            return
        head = bytes(self.buffer[:head_end]).lower()
        at = head.find(b"content-length:")
        line_end = head.find(b"\r\n", at)
        length = int(head[at + 15 : line_end if line_end > 0 else None]) if at >= 0 else 0
        end = head_end + 4 + length
        if len(self.buffer) < end:
            return
        status = int(self.buffer[9:12])
        del self.buffer[:end]
        if self.waiter is not None and not self.waiter.done():
            self.waiter.set_result(status)

    def connection_lost(self, exc: Exception | None) -> None:
        self.transport = None
        if self.waiter is not None and not self.waiter.done():
            self.waiter.set_exception(ConnectionError("closed by the worker"))

    async def request(self, data: bytes) -> int:
        if self.transport is None:
            raise ConnectionError("closed by the worker")
        self.waiter = asyncio.get_running_loop().create_future()
        self.transport.write(data)
        return await self.waiter

    def close(self) -> None:
        if self.transport is not None:
            self.transport.close()


@contextlib.contextmanager
def _no_collections() -> Iterator[None]:
    """The load generator's cyclic collector off for one load run: a full collection, with the
    seeded fleet in this process's memory, pauses it for tens of milliseconds, and every beat
    scheduled meanwhile would count that against the worker."""
    gc.collect()
    gc.disable()
    try:
        yield
    finally:
        gc.enable()


async def _connect(port: int) -> _Conn:
    _, conn = await asyncio.get_running_loop().create_connection(_Conn, "127.0.0.1", port)
    return conn


def _request(credential: str, body: bytes) -> bytes:
    """The bytes of one heartbeat request, as the agent's httpx client sends them."""
    head = (
        "POST /internal/agent/v1/heartbeat HTTP/1.1\r\nHost: 127.0.0.1\r\n"
        "Accept: */*\r\nAccept-Encoding: gzip, deflate\r\nConnection: keep-alive\r\n"
        f"User-Agent: python-httpx/0.28.1\r\nAuthorization: Bearer {credential}\r\n"
        f"Content-Type: application/json\r\nContent-Length: {len(body)}\r\n\r\n"
    )
    return head.encode() + body


async def _open_loop(port: int, rate: float, duration: float, connections: int) -> dict[str, Any]:
    """Beats at ``rate`` per second, each at its scheduled time whatever the answers, round-robin
    over the agents (latency counted from the scheduled time, so queueing shows). Over
    ``connections`` keep-alive connections opened before the clock starts (a beat whose time
    has come takes an idle one, else waits for one: that wait is counted); with 0, each beat on
    a new connection of its own, closed after its answer."""
    with _no_collections():
        return await _open_loop_run(port, rate, duration, connections)


async def _open_loop_run(
    port: int, rate: float, duration: float, connections: int
) -> dict[str, Any]:
    latencies: list[float] = []
    errors = 0
    idle = [await _connect(port) for _ in range(connections)]
    waiters: deque[asyncio.Future[_Conn]] = deque()
    loop = asyncio.get_running_loop()

    async def take() -> _Conn:
        if not connections:
            return await _connect(port)
        if idle:
            return idle.pop()
        waiter: asyncio.Future[_Conn] = loop.create_future()
        waiters.append(waiter)
        return await waiter

    def give(conn: _Conn) -> None:
        if not connections:
            conn.close()
        elif waiters:
            waiters.popleft().set_result(conn)
        else:
            idle.append(conn)

    async def one(index: int, scheduled: float) -> None:
        nonlocal errors
        conn = await take()
        try:
            if await conn.request(_beat_request(index, len(_REQUESTS))) != 200:
                errors += 1
        except (ConnectionError, OSError):
            errors += 1
            conn = await _connect(port)
        latencies.append(time.perf_counter() - scheduled)
        give(conn)

    tasks: list[asyncio.Task[None]] = []
    start = time.perf_counter()
    total = int(rate * duration)
    for k in range(total):
        scheduled = start + k / rate
        delay = scheduled - time.perf_counter()
        if delay > 0:
            await asyncio.sleep(delay)
        tasks.append(asyncio.create_task(one(next(_BEATS), scheduled)))
    await asyncio.gather(*tasks)
    elapsed = time.perf_counter() - start
    for conn in idle:
        conn.close()
    return {
        "sent": total,
        "done": len(latencies),
        "rate": len(latencies) / elapsed,
        "p50": _pct(latencies, 0.5),
        "p99": _pct(latencies, 0.99),
        "errors": errors,
    }


async def _closed_loop(
    port: int, agents: int, duration: float | None, *, count: int = 0
) -> dict[str, Any]:
    """As fast as the worker answers, 64 in flight on 64 keep-alive connections: for
    ``duration`` seconds, or ``count`` beats, over the first ``agents`` agents."""
    latencies: list[float] = []
    errors = 0
    stop_at = time.perf_counter() + (duration or 1e9)
    counter = iter(range(count or 10**12))

    async def worker() -> None:
        nonlocal errors
        conn = await _connect(port)
        while time.perf_counter() < stop_at:
            if next(counter, None) is None:
                break
            k = next(_BEATS)
            t0 = time.perf_counter()
            try:
                if await conn.request(_beat_request(k, agents)) != 200:
                    errors += 1
            except (ConnectionError, OSError):
                errors += 1
                conn = await _connect(port)
            latencies.append(time.perf_counter() - t0)
        conn.close()

    start = time.perf_counter()
    with _no_collections():
        await asyncio.gather(*(worker() for _ in range(CAPACITY_CONCURRENCY)))
    elapsed = time.perf_counter() - start
    return {
        "done": len(latencies),
        "rate": len(latencies) / elapsed,
        "p50": _pct(latencies, 0.5),
        "p99": _pct(latencies, 0.99),
        "errors": errors,
    }


# Each agent's two heartbeat requests, whole (its metrics of even and of odd beats).
_REQUESTS: list[tuple[bytes, bytes]] = []


# Beats are numbered across runs, so that each agent's next beat is the other of its two.
_BEATS = itertools.count()


def _beat_request(k: int, agents: int) -> bytes:
    """The ``k``-th beat, round-robin over the first ``agents`` agents: agent ``k % agents``'s
    beat number ``k // agents``, whose metrics differ from that agent's previous beat."""
    return _REQUESTS[k % agents][(k // agents) % 2]


# --- in-process measures -------------------------------------------------------------------


def _queries_per_heartbeat(sample: list[tuple[str, str]]) -> float:
    from django.db import connection

    from apps.instances.agents.api.beat import heartbeat_answer

    bodies = [(f"Bearer {credential}", _beat_body(iid)) for iid, credential in sample]
    for authorization, body in bodies:  # steady state: after a first beat
        heartbeat_answer(authorization=authorization, body=body)
    counter = _QueryCounter()
    with connection.execute_wrapper(counter):
        for authorization, body in bodies:
            status, _ = heartbeat_answer(authorization=authorization, body=body)
            assert status == 200, status
    return counter.count / len(bodies)


class _QueryCounter:
    """Counts the queries of this thread's connection (no query log, no cap)."""

    def __init__(self) -> None:
        self.count = 0

    def __call__(self, execute: Any, sql: str, params: Any, many: bool, context: Any) -> Any:
        self.count += 1
        return execute(sql, params, many, context)


def _reconcile_measures(runs: int) -> dict[str, float]:
    from django.db import connection
    from django.utils import timezone

    from apps.instances.models import Instance
    from apps.instances.orchestrator.reconcile import reconcile
    from apps.instances.orchestrator.scaling import model_code_converge
    from apps.models.choices import DEPLOYED_STATUSES
    from apps.models.models import LlmModel

    Instance.objects.update(last_heartbeat_at=timezone.now())
    reconcile()  # the lease rows
    times, queries = [], []
    for _ in range(runs):
        counter = _QueryCounter()
        with connection.execute_wrapper(counter):
            t0 = time.perf_counter()
            summary = reconcile()
            times.append(time.perf_counter() - t0)
        assert not summary.get("created") and not summary.get("marked_unavailable"), summary
        queries.append(counter.count)
    ids = list(LlmModel.objects.filter(status__in=DEPLOYED_STATUSES).values_list("id", flat=True))
    # The previous loop (a converge of every deployed model code), once: it is slow.
    counter = _QueryCounter()
    with connection.execute_wrapper(counter):
        t0 = time.perf_counter()
        for model_code_id in ids:
            model_code_converge(model_code_id=model_code_id)
        before_time = time.perf_counter() - t0
    return {
        "time": _median(times),
        "queries": _median(queries),
        "before_time": before_time,
        "before_queries": counter.count,
        "model_codes": len(ids),
    }


def _routing_measures(runs: int) -> dict[str, float]:
    return asyncio.run(_routing(runs))


def _set_status(instance_id: Any, status: str) -> None:
    from apps.instances.models import Instance

    Instance.objects.filter(id=instance_id).update(status=status)


async def _routing(runs: int) -> dict[str, float]:
    from concurrent.futures import ThreadPoolExecutor

    from django.conf import settings

    from apps.gateway.directory import Directory
    from apps.gateway.routing import RoutingTable
    from apps.gateway.selectors import routing_snapshot
    from apps.instances.models import Instance

    table = RoutingTable(
        breaker_failures=settings.GATEWAY_BREAKER_FAILURES,
        breaker_cooldown_s=settings.GATEWAY_BREAKER_COOLDOWN_S,
        load_factor=settings.GATEWAY_PREFIX_LOAD_FACTOR,
    )
    executor = ThreadPoolExecutor(4, thread_name_prefix="gateway-db")
    directory = Directory(table, executor)
    loop = asyncio.get_running_loop()
    reloads, installs, leaves, readies = [], [], [], []
    for _ in range(runs):
        t0 = time.perf_counter()
        await directory.reload()
        reloads.append(time.perf_counter() - t0)
        prepared = await loop.run_in_executor(executor, lambda: table.prepare(routing_snapshot()))
        t0 = time.perf_counter()
        table.install(prepared)  # the only part on the event loop
        installs.append(time.perf_counter() - t0)
    sample = await loop.run_in_executor(
        executor, lambda: list(Instance.objects.values_list("id", "llm_model_id")[: runs * 3])
    )
    for instance_id, model_code_id in sample:
        for status, into in (("unavailable", leaves), ("ready", readies)):
            await loop.run_in_executor(executor, _set_status, instance_id, status)
            event = {
                "instance_id": str(instance_id),
                "model_code_id": model_code_id,
                "status": status,
            }
            t0 = time.perf_counter()
            await directory.apply_instance_event(event)
            into.append(time.perf_counter() - t0)
    executor.shutdown(wait=True)
    return {
        "reload": _median(reloads),
        "install": _median(installs),
        "leave": _median(leaves),
        "ready": _median(readies),
    }


# --- main ----------------------------------------------------------------------------------


def _cell(n: int, args: argparse.Namespace, base_url: str, env: dict[str, str]) -> dict[str, Any]:
    import django
    from django.core.management import call_command
    from django.db import connections

    db_name = env["DATABASE_URL"].rpartition("/")[2]
    _create_database(base_url, db_name)
    os.environ.update(env)
    if not getattr(_cell, "_django", False):
        os.environ.setdefault("DJANGO_SETTINGS_MODULE", "inventiv.settings")
        django.setup()
        _cell._django = True  # type: ignore[attr-defined]
    call_command("migrate", verbosity=0)
    credentials = _seed(n)
    connections.close_all()
    _REQUESTS[:] = [
        (_request(credential, _beat_body(iid, 0)), _request(credential, _beat_body(iid, 1)))
        for iid, credential in credentials
    ]
    out: dict[str, Any] = {"n": n}
    # One core's share of N agents beating every 5 s on the two web cores the target plans.
    rate = n / INTERVAL_S / WEB_CORES
    connections["default"].close_pool()  # this process holds no connection during the load
    paths = [("fast", "inventiv.asgi:application", False)]
    if not args.heartbeats_only:
        paths.append(("django", "django.core.asgi:get_asgi_application", True))
    for label, app, factory in paths:
        web = Web(env, app, factory=factory)
        # The baseline's cost per request does not depend on N: its first 1,000 agents.
        beating = n if label == "fast" else min(n, 1000)
        try:
            # Every agent beats once first (each worker memoises the answers it gives).
            asyncio.run(_closed_loop(web.port, beating, None, count=beating))
            runs: dict[str, list[dict[str, Any]]] = {"pooled": [], "per_beat": [], "closed": []}
            conns = []
            for _ in range(args.runs):
                with ConnectionSampler(base_url, db_name) as sampler:
                    if label == "fast":
                        for mode, pool in (("pooled", OPEN_LOOP_CONNECTIONS), ("per_beat", 0)):
                            before = web.cpu_s()
                            result = asyncio.run(_open_loop(web.port, rate, args.duration, pool))
                            result["cpu"] = (web.cpu_s() - before) / max(result["done"], 1)
                            runs[mode].append(result)
                    before = web.cpu_s()
                    closed = asyncio.run(_closed_loop(web.port, beating, 3.0))
                    closed["cpu"] = (web.cpu_s() - before) / max(closed["done"], 1)
                    runs["closed"].append(closed)
                conns.append(max(sampler.samples or [0]))
            out[label] = {
                mode: {
                    key: (sum if key == "errors" else _median)([r[key] for r in results])
                    for key in ("rate", "p50", "p99", "errors", "cpu")
                }
                for mode, results in runs.items()
                if results
            }
            out[label]["connections"] = max(conns)
        finally:
            web.stop()
    if args.heartbeats_only:
        connections.close_all()
        connections["default"].close_pool()
        _drop_database(base_url, db_name)
        return out
    out["queries_per_beat"] = _queries_per_heartbeat(credentials[:200])
    out["reconcile"] = _reconcile_measures(args.runs)
    out["routing"] = _routing_measures(args.runs)
    connections.close_all()
    connections["default"].close_pool()  # before the database is dropped
    _drop_database(base_url, db_name)
    return out


def _print(results: list[dict[str, Any]], pool: int, load: tuple[str, str]) -> None:
    ms = 1000.0
    print(
        f"Load average of the machine (1, 5, 15 min): {load[0]} at the start, {load[1]} at the end"
    )
    print("\n## Heartbeats, open loop: one web worker pinned to one core (medians)")
    print(
        "(one core's share of N agents beating every 5 s on 2 web cores: N/10 per second; "
        f"pooled: over {OPEN_LOOP_CONNECTIONS} keep-alive connections, as behind a proxy; "
        "per beat: a new connection for each beat, as agents connecting directly to a web role "
        "whose keep-alive is no longer than their interval)"
    )
    print(
        "| N | connections | offered/s | served/s | p50 ms | p99 ms | errors | CPU ms/beat | "
        "beats/s per core at that CPU | DB conns (max) | pool |"
    )
    print("|---|---|---|---|---|---|---|---|---|---|---|")
    for r in results:
        for mode, label in (("pooled", "pooled"), ("per_beat", "per beat")):
            c = r["fast"][mode]
            print(
                f"| {r['n']} | {label} | {r['n'] / INTERVAL_S / WEB_CORES:.0f} | {c['rate']:.0f} | "
                f"{c['p50'] * ms:.1f} | {c['p99'] * ms:.1f} | {c['errors']} | "
                f"{c['cpu'] * ms:.2f} | {1 / c['cpu']:.0f} | {r['fast']['connections']} | "
                f"{pool} |"
            )
    print(
        f"\n## Heartbeats, closed loop ({CAPACITY_CONCURRENCY} in flight): the fast path"
        + ("" if "django" not in results[0] else " against Django's handler")
    )
    print(
        "| N | path | served/s | p99 ms | errors | CPU ms/beat | beats/s per core at that CPU | "
        "DB conns (max) | CPU per beat, django / fast | queries per beat (steady) |"
    )
    print("|---|---|---|---|---|---|---|---|---|---|")
    for r in results:
        for label in ("fast", "django"):
            if label not in r:
                continue
            c = r[label]["closed"]
            ratio = (
                f"{r['django']['closed']['cpu'] / r['fast']['closed']['cpu']:.1f}x"
                if label == "django"
                else ""
            )
            queries = f"{r['queries_per_beat']:.2f}" if "queries_per_beat" in r else "-"
            print(
                f"| {r['n']} | {label} | {c['rate']:.0f} | {c['p99'] * ms:.1f} | "
                f"{c['errors']} | {c['cpu'] * ms:.2f} | {1 / c['cpu']:.0f} | "
                f"{r[label]['connections']} | {ratio} | {queries} |"
            )
    if "reconcile" not in results[0]:
        return
    print("\n## Reconcile: a pass with nothing to change (medians)")
    print(
        "| N | model codes | pass ms | pass queries | before: converge each ms (once) | "
        "before queries | ratio |"
    )
    print("|---|---|---|---|---|---|---|")
    for r in results:
        c = r["reconcile"]
        print(
            f"| {r['n']} | {c['model_codes']} | {c['time'] * ms:.1f} | {c['queries']:.0f} | "
            f"{c['before_time'] * ms:.0f} | {c['before_queries']:.0f} | "
            f"{c['before_time'] / c['time']:.0f}x |"
        )
    print("\n## Routing (a gateway's table; medians)")
    print(
        "| N | full reload ms (thread) | of which on the loop ms | event: instance leaves ms | "
        "event: instance ready (read alone) ms | full reload / ready event |"
    )
    print("|---|---|---|---|---|---|")
    for r in results:
        c = r["routing"]
        print(
            f"| {r['n']} | {c['reload'] * ms:.1f} | {c['install'] * ms:.1f} | "
            f"{c['leave'] * ms:.3f} | {c['ready'] * ms:.2f} | {c['reload'] / c['ready']:.0f}x |"
        )
    print(
        "\nTargets (issue 19): >= 1,000 heartbeats/s per web core with p99 <= 50 ms; "
        "connections never above the pool; a quiet reconcile pass at 10,000 <= 500 ms with "
        "queries independent of converged model codes; one instance event <= 5 ms."
    )


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.fleet", description=__doc__)
    parser.add_argument("--sizes", default="1000,5000,10000")
    parser.add_argument("--duration", type=float, default=6.0)
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument(
        "--heartbeats-only",
        action="store_true",
        help="only the fast path's heartbeats (no Django baseline, reconcile, routing)",
    )
    args = parser.parse_args(argv)
    base_url = os.environ.get("DATABASE_URL") or DEFAULT_DATABASE_URL
    redis_url = os.environ.get("REDIS_URL") or "redis://127.0.0.1:6379/0"
    db_name = f"fleetbench_{secrets.token_hex(3)}"
    env = _setup_environment(base_url, redis_url, db_name)
    os.sched_setaffinity(0, {0})
    load_start = " ".join(Path("/proc/loadavg").read_text().split()[:3])
    results = []
    try:
        for n in (int(x) for x in args.sizes.split(",")):
            print(f"N={n}...", file=sys.stderr, flush=True)
            results.append(_cell(n, args, base_url, env))
    finally:
        _drop_database(base_url, db_name)
        import redis

        client = redis.Redis.from_url(redis_url)
        for key in client.scan_iter(match=env["INVENTIV_REDIS_PREFIX"] + "*", count=1000):
            client.delete(key)
    load_end = " ".join(Path("/proc/loadavg").read_text().split()[:3])
    _print(results, pool=int(env.get("DATABASE_POOL_MAX_SIZE", "8")), load=(load_start, load_end))
    return 0


if __name__ == "__main__":
    sys.exit(main())

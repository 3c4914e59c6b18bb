"""Fault-injection run: the production roles as separate processes under steady load, hundreds
of random faults, then the invariants.

    DATABASE_URL=postgres://postgres@127.0.0.1:5432/postgres \
        .venv/bin/python -m bench.faults --faults 200 --duration 300

Starts, on a fresh PostgreSQL database (created, then dropped) and a private redis-server
(another port, compose's persistence flags, killed and restarted at will): web, a gateway
(uvicorn, 2 workers, lifespan on), a Celery worker (compose's prefork pool), beat, and a model
code with 2 local replicas (agents + mock engines). Client threads send streamed and plain
chat completions through the gateway with the official SDK, counting the tokens they receive.
Meanwhile one fault every ``duration / faults`` seconds, drawn at random: SIGKILL or SIGTERM of
the worker, beat, a gateway worker, an agent, an engine; a Redis SIGKILL and restart; every
database connection of the platform killed (``pg_terminate_backend``); the worker paused
(SIGSTOP, then SIGCONT). Killed roles are restarted as compose's ``restart: unless-stopped``
would. Then load stops, the platform settles (bounded), and the run checks:

* delivered completion tokens (client side) = billed completion tokens (``UsageRecord``);
* 0 duplicate machines (two agents for one instance), 0 orphan processes (tagged processes of
  no live instance, zombies), 0 instances stuck past their deadline;
* every request answered or failed with an error the client saw (no hang past the client's
  timeout).

Prints a table (faults by kind and their median recovery, requests, failures seen by clients)
and exits 1 if an invariant fails (the role logs are then kept). Delivered and billed tokens are
checked both ways: none delivered unbilled; billed but not delivered at most one batch per
gateway SIGKILL (usage is written ahead of each batch, so a kill between the write and the send
bills a batch the client never got). Bounded: setup ~30 s, then ``--duration``, then at most
``--settle`` seconds.
"""

from __future__ import annotations

import argparse
import collections
import contextlib
import os
import random
import secrets
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

CHAT: Any = [{"role": "user", "content": "tell me about fault tolerance"}]
# Seconds: the platform's clocks, short so that recovery fits a bounded run.
TUNING = {
    "INVENTIV_HEARTBEAT_INTERVAL_S": "0.5",
    "INVENTIV_HEARTBEAT_DEADLINE_S": "3",
    "INVENTIV_UNAVAILABLE_REPLACE_AFTER_S": "3",
    "INVENTIV_RECONCILE_INTERVAL_S": "1",
    "INVENTIV_REPLACEMENT_BACKOFF_S": "1",
    "INVENTIV_MASS_HEARTBEAT_LOSS_HOLD_S": "3",
    "INVENTIV_BOOT_DEADLINE_S": "40",
    "INVENTIV_STARTUP_DEADLINE_S": "60",
    "INVENTIV_DRAIN_DEADLINE_S": "10",
    "INVENTIV_COMMAND_LEASE_S": "3",
    "INVENTIV_COMMAND_RESEND_AFTER_S": "20",
    "USAGE_FLUSH_INTERVAL_S": "0.5",
    "USAGE_GATEWAY_TTL_S": "2",
    "USAGE_CLAIM_IDLE_S": "5",
    "USAGE_WRITE_TIMEOUT_S": "8",
    "GATEWAY_ROUTING_REFRESH_S": "1",
    "GATEWAY_UPSTREAM_TIMEOUT_S": "15",
}
FAULTS = [
    "worker_sigkill",
    "worker_sigterm",
    "worker_pause",
    "beat_sigkill",
    "beat_sigterm",
    "gateway_worker_sigkill",
    "gateway_worker_sigterm",
    "agent_sigkill",
    "agent_sigterm",
    "engine_sigkill",
    "engine_sigterm",
    "redis_restart",
    "db_connections_killed",
]


@dataclass
class Outcome:
    started: float
    ended: float
    stream: bool
    delivered: int
    error: str = ""  # "" when answered in full


@dataclass
class Fault:
    kind: str
    at: float
    recovered_at: float | None = None


@dataclass
class Samples:
    """What the monitor saw, over time."""

    points: list[tuple[float, float, float, int]] = field(default_factory=list)
    # (time, last reconcile (epoch), last usage row written (epoch), ready instances)


def _percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(q * (len(ordered) - 1)))]


# --- processes -------------------------------------------------------------------------------


def _proc_cmdline(pid: int) -> str:
    try:
        return Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode()
    except OSError:
        return ""


def _children(pid: int) -> list[int]:
    out = []
    for entry in os.scandir("/proc"):
        if not entry.name.isdigit():
            continue
        try:
            fields = Path(f"/proc/{entry.name}/stat").read_bytes().rsplit(b")", 1)[1].split()
        except OSError:
            continue
        if int(fields[1]) == pid and fields[0] != b"Z":
            out.append(int(entry.name))
    return out


class Redis:
    def __init__(self, directory: Path, port: int, args: list[str]) -> None:
        self.dir, self.port, self.args = directory, port, args
        self.url = f"redis://127.0.0.1:{port}/0"
        self.proc: subprocess.Popen[bytes] | None = None

    def start(self) -> None:
        import redis

        exe = shutil.which("redis-server")
        assert exe, "redis-server is needed"
        self.proc = subprocess.Popen(
            [exe, *self.args, "--port", str(self.port), "--bind", "127.0.0.1",
             "--dir", str(self.dir), "--protected-mode", "no", "--loglevel", "warning"],
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True,
        )  # fmt: skip
        client = redis.Redis.from_url(self.url, socket_timeout=1)
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

    def kill(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(5)


class Platform:
    """The roles as processes, restarted when a fault killed them."""

    def __init__(self, group: Any, python: str, gateway_port: int, beat_file: Path) -> None:
        self.group = group
        self.python = python
        self.gateway_port = gateway_port
        self.beat_file = beat_file
        self.roles: dict[str, Any] = {}
        self.lock = threading.Lock()

    def _args(self, role: str) -> list[str]:
        py = self.python
        if role == "worker":
            return [py, "-m", "celery", "-A", "inventiv", "worker", "-P", "prefork", "-c", "3",
                    "--without-heartbeat", "--without-mingle", "--without-gossip", "-l", "INFO",
                    "-n", f"faults-{os.getpid()}@%h"]  # fmt: skip
        if role == "beat":
            return [py, "-m", "celery", "-A", "inventiv", "beat", "-l", "INFO",
                    "--schedule", str(self.beat_file)]  # fmt: skip
        return [py, "-m", "uvicorn", "apps.gateway.asgi:application", "--host", "127.0.0.1",
                "--port", str(self.gateway_port), "--workers", "2", "--lifespan", "on",
                "--timeout-graceful-shutdown", "3", "--log-level", "warning"]  # fmt: skip

    def start(self, role: str) -> None:
        with self.lock:
            self.roles[role] = self.group.start(f"{role}-{len(self.group.procs)}", self._args(role))

    def alive(self, role: str) -> bool:
        return bool(self.roles[role].alive())

    def signal_role(self, role: str, sig: int, *, restart_after: float = 0.3) -> None:
        proc = self.roles[role]
        proc.kill(sig)
        if sig == signal.SIGTERM:
            deadline = time.monotonic() + 8
            while proc.alive() and time.monotonic() < deadline:
                time.sleep(0.05)
            proc.kill(signal.SIGKILL)
        else:
            with contextlib.suppress(subprocess.TimeoutExpired):
                proc.proc.wait(5)
        time.sleep(restart_after)
        self.start(role)

    def gateway_workers(self) -> list[int]:
        """The gateway's uvicorn workers: its supervisor's children but multiprocessing's
        resource tracker (killing that one is no gateway fault, and it stays a zombie until
        the supervisor next needs a tracker)."""
        workers = []
        for pid in _children(self.roles["gateway"].pid):
            try:
                cmdline = Path(f"/proc/{pid}/cmdline").read_bytes()
            except OSError:
                continue
            if b"resource_tracker" not in cmdline:
                workers.append(pid)
        return workers

    def ensure_all(self) -> None:
        for role in ("worker", "beat", "gateway"):
            if not self.alive(role):
                self.start(role)


def _tagged() -> dict[int, tuple[str, str]]:
    """pid → (instance id, "agent" or "engine") for processes carrying the local tag."""
    needle = b"INVENTIV_INSTANCE_TAG="
    out: dict[int, tuple[str, str]] = {}
    for entry in os.scandir("/proc"):
        if not entry.name.isdigit():
            continue
        try:
            environ = Path(f"/proc/{entry.name}/environ").read_bytes()
            state = Path(f"/proc/{entry.name}/stat").read_bytes().rsplit(b")", 1)[1].split()[0]
        except OSError:
            continue
        if state == b"Z":
            continue
        for var in environ.split(b"\0"):
            if var.startswith(needle):
                cmd = _proc_cmdline(int(entry.name))
                kind = "engine" if "mock_engine" in cmd else "agent" if "-m agent" in cmd else ""
                if kind:
                    out[int(entry.name)] = (var[len(needle) :].decode(), kind)
                break
    return out


def _zombies(parents: set[int]) -> list[int]:
    found = []
    for entry in os.scandir("/proc"):
        if not entry.name.isdigit():
            continue
        try:
            fields = Path(f"/proc/{entry.name}/stat").read_bytes().rsplit(b")", 1)[1].split()
        except OSError:
            continue
        if fields[0] == b"Z" and int(fields[1]) in parents:
            found.append(int(entry.name))
    return found


def _described(pids: list[int]) -> str:
    """How many, and for each its name and its parent's command line (which role left it)."""
    parts = []
    for pid in pids:
        try:
            stat = Path(f"/proc/{pid}/stat").read_bytes()
            name = stat[stat.index(b"(") + 1 : stat.rindex(b")")].decode(errors="replace")
            ppid = int(stat.rsplit(b")", 1)[1].split()[1])
            parent = Path(f"/proc/{ppid}/cmdline").read_bytes().replace(b"\0", b" ").decode()
        except (OSError, ValueError):
            continue
        parts.append(f"{name} of {ppid} ({parent.strip()[:80]})")
    return f"{len(pids)}" + (f": {'; '.join(parts)}" if parts else "")


# --- load ------------------------------------------------------------------------------------


def _client_loop(base_url: str, key: str, model: str, stop: threading.Event,
                 outcomes: list[Outcome], seed: int) -> None:  # fmt: skip
    import openai

    rng = random.Random(seed)
    client = openai.OpenAI(base_url=base_url, api_key=key, max_retries=0, timeout=30)
    while not stop.is_set():
        stream = rng.random() < 0.5
        max_tokens = rng.randint(4, 40)
        started = time.time()
        delivered = 0
        error = ""
        try:
            if stream:
                for chunk in client.chat.completions.create(
                    model=model, messages=CHAT, max_tokens=max_tokens, stream=True
                ):
                    delivered += sum(1 for c in chunk.choices if c.delta.content)
            else:
                reply = client.chat.completions.create(
                    model=model, messages=CHAT, max_tokens=max_tokens
                )
                delivered = reply.usage.completion_tokens if reply.usage else 0
        except openai.APITimeoutError:
            error = "timeout"
        except openai.APIStatusError as exc:
            error = f"{exc.status_code} {getattr(exc, 'code', '') or ''}".strip()
        except openai.APIError as exc:  # an SSE error event or a broken connection
            code = getattr(exc, "code", None)
            error = str(code) if code else type(exc).__name__
        outcomes.append(Outcome(started, time.time(), stream, delivered, error))
        if error:
            time.sleep(0.1)


# --- the run ---------------------------------------------------------------------------------


def main() -> None:
    parser = argparse.ArgumentParser(prog="python -m bench.faults", description=__doc__)
    parser.add_argument("--faults", type=int, default=200)
    parser.add_argument("--duration", type=float, default=300.0, help="seconds of faults")
    parser.add_argument("--clients", type=int, default=6)
    parser.add_argument("--settle", type=float, default=90.0)
    parser.add_argument("--seed", type=int, default=13)
    args = parser.parse_args()
    base_db = os.environ.get("DATABASE_URL", "postgres://postgres@127.0.0.1:5432/postgres")
    run = secrets.token_hex(3)
    db_name = f"inventiv_faults_{run}"
    state = Path(tempfile.mkdtemp(prefix="inventiv-faults-"))
    import yaml

    from tests.processes import PYTHON, ROOT, free_port

    compose = yaml.safe_load((ROOT / "compose.yaml").read_text())
    redis_args = compose["services"]["redis"]["command"][1:]
    (state / "redis").mkdir()
    redis_server = Redis(state / "redis", free_port(), redis_args)
    redis_server.start()
    os.environ.update(TUNING)
    os.environ["DATABASE_URL"] = base_db.rsplit("/", 1)[0] + "/" + db_name
    os.environ["REDIS_URL"] = redis_server.url
    os.environ["INVENTIV_REDIS_PREFIX"] = f"faults-{run}:"
    os.environ.setdefault("SECRET_KEY", "faults-" + secrets.token_urlsafe(24))
    os.environ["INVENTIV_STATE_DIR"] = str(state / "state")
    os.environ["INVENTIV_LOCAL_PROVIDER"] = "1"
    os.environ["PYTHONUNBUFFERED"] = "1"
    for name in ("SECURE_SSL_REDIRECT", "SESSION_COOKIE_SECURE", "CSRF_COOKIE_SECURE"):
        os.environ[name] = "0"
    os.environ["DJANGO_SETTINGS_MODULE"] = "inventiv.settings"

    import psycopg

    with psycopg.connect(base_db, autocommit=True) as conn:
        conn.execute(f'CREATE DATABASE "{db_name}"')
    ok = False
    try:
        ok = _run(args, base_db, db_name, redis_server, state, PYTHON)
    finally:
        redis_server.kill()
        with psycopg.connect(base_db, autocommit=True) as conn:
            conn.execute(f'DROP DATABASE IF EXISTS "{db_name}" WITH (FORCE)')
        if ok:
            shutil.rmtree(state, ignore_errors=True)
        else:
            print(f"logs kept in {state / 'logs'}")
    raise SystemExit(0 if ok else 1)


def _run(args: argparse.Namespace, base_db: str, db_name: str, redis_server: Redis,
         state: Path, python: str) -> bool:  # fmt: skip
    import logging

    import django

    django.setup()
    for name in ("httpx", "httpx2", "openai"):
        logging.getLogger(name).setLevel(logging.WARNING)
    import psycopg
    from django.core.management import call_command
    from django.db import close_old_connections
    from django.db.models import Max, Sum

    from apps.accounts.services import user_create
    from apps.billing.models import UsageRecord
    from apps.billing.services import usage_flush
    from apps.gateway.services import api_key_create
    from apps.gateway.usage_buffer import usage_buffer
    from apps.instances.choices import InstanceStatus
    from apps.instances.models import Instance, OrchestratorLock, Provider
    from apps.models.choices import Engine
    from apps.models.services import model_create, model_deploy
    from tests.processes import ProcessGroup, free_port

    S = InstanceStatus
    call_command("migrate", verbosity=0)
    logs = state / "logs"
    logs.mkdir()
    group = ProcessGroup(dict(os.environ), logs)
    rng = random.Random(args.seed)
    outcomes: list[Outcome] = []
    faults: list[Fault] = []
    samples = Samples()
    stop_load, stop_monitor = threading.Event(), threading.Event()
    replicas = 2
    try:
        _, web_url = group.web()
        group.env["INVENTIV_AGENT_API_URL"] = web_url
        platform = Platform(group, python, free_port(), state / "beat-schedule")
        for role in ("worker", "beat", "gateway"):
            platform.start(role)
        gateway_url = f"http://127.0.0.1:{platform.gateway_port}"
        group.wait_http(platform.roles["gateway"], gateway_url + "/healthz", timeout=60)
        user = user_create(email="faults@example.com", password=None, is_staff=True)
        org = user.organizations.first()
        assert org is not None
        Provider.objects.get_or_create(name="local", defaults={"kind": "local"})
        model = model_create(organization=org, name="faulty", engine=Engine.MOCK,
                             model_id="bench/mock", gpu_count=0,
                             engine_args={"token_rate": 80})  # fmt: skip
        model_deploy(model=model, replicas=replicas)
        _, key = api_key_create(organization=org, name="faults")

        def ready() -> int:
            return Instance.objects.filter(llm_model=model, status=S.READY).count()

        deadline = time.monotonic() + 90
        while ready() < replicas:
            if time.monotonic() > deadline:
                raise RuntimeError("the model code never became ready")
            time.sleep(0.2)
        print(f"platform up: {replicas} replicas ready; {args.faults} faults over "
              f"{args.duration:.0f}s, {args.clients} clients", flush=True)  # fmt: skip

        def monitor() -> None:
            while not stop_monitor.is_set():
                try:
                    lock = OrchestratorLock.objects.filter(name="reconcile").first()
                    last_reconcile = (
                        lock.last_run_at.timestamp() if lock and lock.last_run_at else 0
                    )
                    last_row = UsageRecord.objects.aggregate(m=Max("created_at"))["m"]
                    samples.points.append(
                        (time.time(), last_reconcile, last_row.timestamp() if last_row else 0,
                         ready())
                    )  # fmt: skip
                except Exception:
                    close_old_connections()
                time.sleep(0.25)
            close_old_connections()

        threads = [threading.Thread(target=monitor, daemon=True)]
        threads += [
            threading.Thread(
                target=_client_loop,
                args=(gateway_url + "/v1", key, model.name, stop_load, outcomes, args.seed + i),
                daemon=True,
            )
            for i in range(args.clients)
        ]
        for thread in threads:
            thread.start()

        def inject(kind: str) -> None:
            if kind.startswith(("worker_", "beat_")):
                role = kind.split("_")[0]
                if kind == "worker_pause":
                    platform.roles["worker"].kill(signal.SIGSTOP)
                    time.sleep(rng.uniform(1, 4))
                    platform.roles["worker"].kill(signal.SIGCONT)
                    return
                sig = signal.SIGKILL if kind.endswith("sigkill") else signal.SIGTERM
                platform.signal_role(role, sig)
            elif kind.startswith("gateway_worker"):
                workers = platform.gateway_workers()
                if workers:
                    sig = signal.SIGKILL if kind.endswith("sigkill") else signal.SIGTERM
                    with contextlib.suppress(ProcessLookupError):
                        os.kill(rng.choice(workers), sig)
            elif kind.startswith(("agent_", "engine_")):
                wanted = kind.split("_")[0]
                pids = [pid for pid, (_, what) in _tagged().items() if what == wanted]
                if pids:
                    sig = signal.SIGKILL if kind.endswith("sigkill") else signal.SIGTERM
                    with contextlib.suppress(ProcessLookupError):
                        os.kill(rng.choice(pids), sig)
            elif kind == "redis_restart":
                redis_server.kill()
                time.sleep(rng.uniform(0.2, 1.5))
                redis_server.start()
            elif kind == "db_connections_killed":
                with psycopg.connect(base_db, autocommit=True) as conn:
                    conn.execute(
                        "SELECT pg_terminate_backend(pid) FROM pg_stat_activity "
                        "WHERE datname = %s AND pid <> pg_backend_pid()",
                        [db_name],
                    )

        interval = args.duration / max(1, args.faults)
        started = time.monotonic()
        for i in range(args.faults):
            target = started + i * interval
            time.sleep(max(0.0, target - time.monotonic()))
            kind = rng.choice(FAULTS)
            fault = Fault(kind, time.time())
            faults.append(fault)
            try:
                inject(kind)
            except Exception as exc:  # a fault that could not be injected is reported
                print(f"fault {kind} failed to inject: {exc!r}", flush=True)
                fault.kind += " (not injected)"
            with contextlib.suppress(Exception):
                platform.ensure_all()
            if (i + 1) % 25 == 0:
                print(f"  {i + 1} faults, {len(outcomes)} requests", flush=True)

        # Settle: every role up, load stopped, replicas back, the buffer drained.
        stop_load.set()
        for thread in threads[1:]:
            thread.join(40)
        platform.ensure_all()
        settle_deadline = time.monotonic() + args.settle
        buffer = usage_buffer()
        while time.monotonic() < settle_deadline:
            time.sleep(1)
            with contextlib.suppress(Exception):
                close_old_connections()
                usage_flush()
                transitional = Instance.objects.filter(
                    llm_model=model,
                    status__in=[S.PROVISIONING, S.BOOTING, S.STARTING, S.UNAVAILABLE,
                                S.DRAINING, S.TERMINATING],
                ).count()  # fmt: skip
                if (
                    ready() >= replicas
                    and not transitional
                    and buffer.depth() == 0
                    and not buffer.orphans()
                ):
                    break
        usage_flush()
        stop_monitor.set()
        threads[0].join(5)

        # --- invariants -------------------------------------------------------------------
        delivered = sum(o.delivered for o in outcomes)
        billed = UsageRecord.objects.aggregate(s=Sum("completion_tokens"))["s"] or 0
        tagged = _tagged()
        agents = collections.Counter(iid for iid, what in tagged.values() if what == "agent")
        duplicates = sum(n - 1 for n in agents.values() if n > 1)
        holding = {str(i) for i in Instance.objects.filter(
            status__in=[S.BOOTING, S.STARTING, S.READY, S.UNAVAILABLE, S.DRAINING,
                        S.TERMINATING, S.PROVISIONING]).values_list("id", flat=True)}  # fmt: skip
        orphans = [pid for pid, (iid, _) in tagged.items() if iid not in holding]
        ours = {p.pid for p in group.procs}
        for pid in list(ours):
            ours.update(_children(pid))
        zombies = _zombies(ours)
        zombies_seen = _described(zombies)  # now: a zombie is gone once reaped
        now = time.time()
        limits = {S.PROVISIONING: 60, S.TERMINATING: 60, S.BOOTING: 40, S.STARTING: 60,
                  S.DRAINING: 30, S.UNAVAILABLE: 30}  # fmt: skip
        stuck = [
            i for i in Instance.objects.filter(status__in=list(limits))
            if now - i.status_changed_at.timestamp() > limits[S(i.status)]
        ]  # fmt: skip
        hangs = [o for o in outcomes if o.ended - o.started > 31]

        # Recovery: per kind, from the fault to the first sign the platform works again.
        def first_after(t0: float, test: Any) -> float | None:
            for point in samples.points:
                if point[0] > t0 and test(point, t0):
                    return point[0]
            return None

        for fault in faults:
            t0 = fault.at
            kind = fault.kind
            if kind.startswith(("worker_", "beat_", "db_")):
                fault.recovered_at = first_after(t0, lambda p, t: p[1] > t and p[2] > t)
            elif kind.startswith(("agent_", "engine_")):
                fault.recovered_at = first_after(t0 + 3.5, lambda p, t: p[3] >= replicas)
            else:  # gateway and Redis: the first request answered in full after the fault
                done = [o.ended for o in outcomes if o.started > t0 and not o.error]
                fault.recovered_at = min(done) if done else None
    finally:
        stop_load.set()
        stop_monitor.set()
        group.stop_all()
        for pid in _tagged():
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)

    # --- the table ----------------------------------------------------------------------------
    print(f"\nFault-injection run ({os.cpu_count()} cores, Python {sys.version.split()[0]}, "
          f"seed {args.seed})")  # fmt: skip
    print(f"{'fault':<28} {'n':>5} {'recovered':>10} {'median s':>9} {'p90 s':>8}")
    by_kind: dict[str, list[Fault]] = collections.defaultdict(list)
    for fault in faults:
        by_kind[fault.kind].append(fault)
    for kind in sorted(by_kind):
        times = [f.recovered_at - f.at for f in by_kind[kind] if f.recovered_at is not None]
        med = f"{statistics.median(times):.2f}" if times else "-"
        p90 = f"{_percentile(times, 0.9):.2f}" if times else "-"
        print(f"{kind:<28} {len(by_kind[kind]):>5} {len(times):>10} {med:>9} {p90:>8}")
    print(f"{'total':<28} {len(faults):>5}")
    failures = collections.Counter(o.error for o in outcomes if o.error)
    streamed = sum(1 for o in outcomes if o.stream)
    print(f"\nrequests: {len(outcomes)} ({streamed} streamed), answered in full: "
          f"{len(outcomes) - sum(failures.values())}, failed (seen by the client): "
          f"{sum(failures.values())}")  # fmt: skip
    for error, n in failures.most_common():
        print(f"  {error:<40} {n:>6}")
    # A gateway SIGKILLed between writing a stream's checkpoint and sending that batch bills
    # the batch the client never got: at most one batch (a token or so) per such kill. Tokens
    # delivered and not billed must be none.
    kills = sum(1 for f in faults if f.kind == "gateway_worker_sigkill")
    unbilled, overbilled = max(0, delivered - billed), max(0, billed - delivered)
    print(f"\ndelivered {delivered} completion tokens, billed {billed}")
    checks = [
        ("tokens delivered and not billed", str(unbilled), unbilled == 0),
        (
            "tokens billed, not delivered (<= 1 batch per gateway SIGKILL)",
            f"{overbilled} (bound {kills})",
            overbilled <= kills,
        ),
        ("duplicate machines", str(duplicates), duplicates == 0),
        ("orphan processes (tagged, no live instance)", str(len(orphans)), not orphans),
        ("zombie processes", zombies_seen, not zombies),
        ("instances stuck past their deadline", str(len(stuck)), not stuck),
        ("requests neither answered nor failed visibly", str(len(hangs)), not hangs),
    ]
    print()
    for name, value, passed in checks:
        print(f"{'PASS' if passed else 'FAIL'}  {name:<62} {value}")
    return all(passed for _, _, passed in checks)


if __name__ == "__main__":
    main()

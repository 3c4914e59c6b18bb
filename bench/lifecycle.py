"""Lifecycle benchmark: command pickup latency and deploy-to-ready time with the local provider.

    DATABASE_URL=postgres://postgres@127.0.0.1:5432/postgres REDIS_URL=redis://127.0.0.1:6379/0 \
        .venv/bin/python -m bench.lifecycle [--runs 5] [--pings 50]

Starts its own web and worker processes on a scratch PostgreSQL database (created and dropped)
and a private Redis key prefix, then measures:
* command pickup: intent committed → the worker's task running (ping_task, Redis broker);
* deploy-to-ready: model code deployed (1 replica, mock engine) → instance ready.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import secrets
import statistics
import sys
import tempfile
import time
from pathlib import Path


def _percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(q * (len(ordered) - 1)))]


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--runs", type=int, default=5)
    parser.add_argument("--pings", type=int, default=50)
    args = parser.parse_args()
    base_db = os.environ.get("DATABASE_URL", "postgres://postgres@127.0.0.1:5432/postgres")
    os.environ.setdefault("REDIS_URL", "redis://127.0.0.1:6379/0")
    run = secrets.token_hex(3)
    db_name = f"inventiv_bench_{run}"
    admin_url = base_db
    os.environ["DATABASE_URL"] = base_db.rsplit("/", 1)[0] + "/" + db_name
    os.environ["INVENTIV_REDIS_PREFIX"] = f"bench-{run}:"
    os.environ.setdefault("SECRET_KEY", "bench-" + secrets.token_urlsafe(24))
    os.environ["INVENTIV_STATE_DIR"] = tempfile.mkdtemp(prefix="inventiv-bench-")
    os.environ["INVENTIV_HEARTBEAT_INTERVAL_S"] = "0.5"
    os.environ["INVENTIV_RECONCILE_INTERVAL_S"] = "2"
    os.environ["INVENTIV_LOCAL_PROVIDER"] = "1"
    for name in ("SECURE_SSL_REDIRECT", "SESSION_COOKIE_SECURE", "CSRF_COOKIE_SECURE"):
        os.environ[name] = "0"
    os.environ["DJANGO_SETTINGS_MODULE"] = "inventiv.settings"

    import psycopg

    with psycopg.connect(admin_url, autocommit=True) as conn:
        conn.execute(f'CREATE DATABASE "{db_name}"')
    try:
        _bench(args)
    finally:
        with psycopg.connect(admin_url, autocommit=True) as conn:
            conn.execute(f'DROP DATABASE IF EXISTS "{db_name}" WITH (FORCE)')


def _bench(args: argparse.Namespace) -> None:
    import django

    django.setup()
    from asgiref.sync import sync_to_async
    from channels.layers import get_channel_layer
    from django.core.management import call_command
    from django.db import transaction

    from apps.accounts.services import user_create
    from apps.instances.choices import InstanceStatus
    from apps.instances.models import Provider
    from apps.instances.tasks import ping_task
    from apps.models.choices import Engine
    from apps.models.services import model_create, model_decommission, model_deploy
    from inventiv.events import STAFF_GROUP
    from tests.processes import ProcessGroup

    call_command("migrate", verbosity=0)
    log_dir = Path(tempfile.mkdtemp(prefix="inventiv-bench-logs-"))
    group = ProcessGroup(dict(os.environ), log_dir)
    try:
        _, url = group.web()
        group.env["INVENTIV_AGENT_API_URL"] = url
        group.worker(concurrency=4)
        user = user_create(email="bench@example.com", password=None, is_staff=True)
        org = user.organizations.first()
        Provider.objects.create(name="local", kind="local")

        # Command pickup latency: one event loop for the whole measurement.
        def send(i: int) -> float:
            sent: dict[str, float] = {}

            def enqueue() -> None:
                sent["at"] = time.time()
                ping_task.delay(ping_id=str(i), organization_id=org.id, sent_at=sent["at"])

            with transaction.atomic():
                transaction.on_commit(enqueue)
            return sent["at"]

        async def measure() -> list[float]:
            layer = get_channel_layer()
            channel = await layer.new_channel()
            await layer.group_add(STAFF_GROUP, channel)
            results: list[float] = []
            for i in range(args.pings + 3):
                sent_at = await sync_to_async(send, thread_sensitive=False)(i)
                while True:
                    message = await layer.receive(channel)
                    if message["data"].get("ping_id") == str(i):
                        break
                if i >= 3:  # warm-up excluded
                    results.append((message["data"]["worker_at"] - sent_at) * 1000)
            return results

        pickups = asyncio.run(measure())

        # Deploy-to-ready.
        ready_times: list[float] = []
        for run in range(args.runs):
            model = model_create(
                organization=org,
                name=f"bench-{run}",
                engine=Engine.MOCK,
                model_id="bench/mock",
                gpu_count=0,
            )
            started = time.perf_counter()
            model_deploy(model=model, replicas=1)
            while not model.instances.filter(status=InstanceStatus.READY).exists():
                time.sleep(0.01)
            ready_times.append(time.perf_counter() - started)
            model_decommission(model=model)
        deadline = time.monotonic() + 30
        while (
            time.monotonic() < deadline
            and model.instances.exclude(status=InstanceStatus.TERMINATED).exists()
        ):
            time.sleep(0.1)
    finally:
        group.stop_all()

    print(f"\nLifecycle benchmark ({os.cpu_count()} cores, Python {sys.version.split()[0]})")
    print(f"{'measure':<44} {'n':>4} {'median':>10} {'p90':>10} {'min':>10}")
    print(
        f"{'command pickup, commit -> task running (ms)':<44} {len(pickups):>4} "
        f"{statistics.median(pickups):>10.1f} {_percentile(pickups, 0.9):>10.1f} "
        f"{min(pickups):>10.1f}"
    )
    print(
        f"{'deploy -> ready, local provider (s)':<44} {len(ready_times):>4} "
        f"{statistics.median(ready_times):>10.2f} {_percentile(ready_times, 0.9):>10.2f} "
        f"{min(ready_times):>10.2f}"
    )


if __name__ == "__main__":
    main()

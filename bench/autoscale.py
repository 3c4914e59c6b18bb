"""Autoscaling benchmark: load spike to scale-up decision, first request at zero to its first
token, held requests served vs refused (issue 9).

    DATABASE_URL=postgres://postgres@127.0.0.1:5432/postgres REDIS_URL=redis://127.0.0.1:6379/0 \
        .venv/bin/python -m bench.autoscale [--runs 3]

Starts its own web (gateway mounted at /v1), worker and beat on a scratch PostgreSQL database
(created and dropped) and a private Redis key prefix, with the local provider and the mock
engine, then measures, per run (medians printed):
* spike -> decision: a load spike published to the gateways' board -> the periodic autoscaler's
  ScalingDecision row (reconcile every 1 s);
* zero -> first token: a streamed request for a model code at zero -> its first content token
  (hold, one wake, provision, agent, engine ready, routing, answer);
* the same from a model code scaled to zero by power-off (``scale_to_zero_mode`` power_off: the
  wake powers the kept machine on, its agent resumes; no creation, no registration), and its
  ratio to the terminate case measured in the same run;
* held served / refused: 30 concurrent requests at zero with a queue of 20.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import secrets
import statistics
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--runs", type=int, default=3)
    args = parser.parse_args()
    base_db = os.environ.get("DATABASE_URL", "postgres://postgres@127.0.0.1:5432/postgres")
    os.environ.setdefault("REDIS_URL", "redis://127.0.0.1:6379/0")
    run = secrets.token_hex(3)
    db_name = f"inventiv_bench_{run}"
    os.environ["DATABASE_URL"] = base_db.rsplit("/", 1)[0] + "/" + db_name
    os.environ["INVENTIV_REDIS_PREFIX"] = f"bench-{run}:"
    os.environ.setdefault("SECRET_KEY", "bench-" + secrets.token_urlsafe(24))
    os.environ["INVENTIV_STATE_DIR"] = tempfile.mkdtemp(prefix="inventiv-bench-")
    os.environ["INVENTIV_HEARTBEAT_INTERVAL_S"] = "0.5"
    os.environ["INVENTIV_RECONCILE_INTERVAL_S"] = "1"
    os.environ["INVENTIV_LOCAL_PROVIDER"] = "1"
    os.environ["GATEWAY_HOLD_QUEUE_MAX"] = "20"
    os.environ["GATEWAY_HOLD_COMMENT_S"] = "1"
    os.environ["GATEWAY_ROUTING_REFRESH_S"] = "1"
    for name in ("SECURE_SSL_REDIRECT", "SESSION_COOKIE_SECURE", "CSRF_COOKIE_SECURE"):
        os.environ[name] = "0"
    os.environ["DJANGO_SETTINGS_MODULE"] = "inventiv.settings"

    import psycopg

    with psycopg.connect(base_db, autocommit=True) as conn:
        conn.execute(f'CREATE DATABASE "{db_name}"')
    try:
        _bench(args)
    finally:
        with psycopg.connect(base_db, autocommit=True) as conn:
            conn.execute(f'DROP DATABASE IF EXISTS "{db_name}" WITH (FORCE)')


def _first_token(url: str, key: str, name: str, out: list[dict[str, Any]]) -> None:
    import httpx

    started = time.perf_counter()
    record: dict[str, Any] = {"status": None, "ttft": None}
    body = {"model": name, "stream": True, "messages": [{"role": "user", "content": "hi"}]}
    try:
        with httpx.stream(
            "POST",
            url + "/v1/chat/completions",
            json=body,
            headers={"Authorization": f"Bearer {key}"},
            timeout=180,
        ) as response:
            record["status"] = response.status_code
            for line in response.iter_lines():
                if record["ttft"] is None and line.startswith("data:") and line != "data: [DONE]":
                    chunk = json.loads(line[5:])
                    if any(c["delta"].get("content") for c in chunk.get("choices", [])):
                        record["ttft"] = time.perf_counter() - started
    except httpx.HTTPError as exc:
        record["status"] = repr(exc)
    out.append(record)


def _progress(line: str) -> None:
    print(line, file=sys.stderr, flush=True)


def _wait_status(instances: Any, model: Any, status: str, timeout: float = 90.0) -> None:
    deadline = time.monotonic() + timeout
    while not instances.objects.filter(llm_model=model, status=status).exists():
        if time.monotonic() > deadline:
            raise SystemExit(f"{model.name}: no instance {status} within {timeout:.0f}s")
        time.sleep(0.1)


def _bench(args: argparse.Namespace) -> None:
    import django

    django.setup()
    from django.core.management import call_command

    from apps.accounts.services import user_create
    from apps.gateway.capacity import RedisLoadBoard
    from apps.gateway.services import api_key_create
    from apps.instances.choices import HOLDS_MACHINE, InstanceStatus
    from apps.instances.models import Instance, Provider
    from apps.models.choices import Engine
    from apps.models.models import ScalingDecision
    from apps.models.services import (
        model_create,
        model_decommission,
        model_deploy,
        model_set_scaling_policy,
    )
    from tests.processes import ProcessGroup

    call_command("migrate", verbosity=0)
    log_dir = Path(tempfile.mkdtemp(prefix="inventiv-bench-logs-"))
    group = ProcessGroup(dict(os.environ), log_dir)
    spikes: list[float] = []
    wakes: list[float] = []
    power_wakes: list[float] = []
    served = refused = other = 0
    try:
        _, url = group.web()
        group.env["INVENTIV_AGENT_API_URL"] = url
        group.worker(concurrency=4)
        group.start(
            "beat",
            [
                sys.executable,
                "-m",
                "celery",
                "-A",
                "inventiv",
                "beat",
                "-l",
                "WARNING",
                "-s",
                str(log_dir / "beat-schedule"),
            ],
        )
        user = user_create(email="bench@example.com", password=None, is_staff=True)
        org = user.organizations.first()
        assert org is not None
        Provider.objects.create(name="local", kind="local")
        _, key = api_key_create(organization=org, name="bench")
        models = []

        def at_zero(name: str) -> Any:
            model = model_create(
                organization=org,
                name=name,
                engine=Engine.MOCK,
                model_id="bench/mock",
                gpu_count=0,
            )
            model_deploy(model=model, replicas=0)
            model_set_scaling_policy(
                model=model,
                min_replicas=0,
                max_replicas=1,
                idle_to_zero_s=3600,
                hold_timeout_s=180,
            )
            models.append(model)
            return model

        for n in range(args.runs):
            # Spike -> decision (a model code at 1 replica that may go to 4).
            model = model_create(
                organization=org,
                name=f"spike-{n}",
                engine=Engine.MOCK,
                model_id="bench/mock",
                gpu_count=0,
            )
            model_deploy(model=model, replicas=1)
            model_set_scaling_policy(
                model=model,
                min_replicas=1,
                max_replicas=4,
                target_load_per_replica=4,
                scale_up_cooldown_s=0,
            )
            models.append(model)
            time.sleep(1.5)
            started = time.perf_counter()
            published = 0.0
            while not ScalingDecision.objects.filter(model_code=model).exists():
                # Republished every second, as a gateway does (the counts live 5 s): a worker
                # busy past that must still see the spike.
                if time.perf_counter() - published >= 1.0:
                    published = time.perf_counter()
                    asyncio.run(
                        RedisLoadBoard().publish(
                            gateway_id=f"bench-{n}",
                            counts={model.id: (16, 0)},
                            requested={model.id},
                        )
                    )
                time.sleep(0.01)
            spikes.append(time.perf_counter() - started)
            _progress(f"run {n}: spike -> decision {spikes[-1]:.2f}s")

            # Zero -> first token.
            model = at_zero(f"zero-{n}")
            out: list[dict[str, Any]] = []
            _first_token(url, key, model.name, out)
            if out[0]["ttft"] is not None:
                wakes.append(out[0]["ttft"])
            _progress(f"run {n}: zero -> first token {out[0]}")

            # Zero by power-off -> first token: one replica, then scaled to zero powered off.
            model = model_create(
                organization=org,
                name=f"off-{n}",
                engine=Engine.MOCK,
                model_id="bench/mock",
                gpu_count=0,
            )
            model_deploy(model=model, replicas=1)
            models.append(model)
            _wait_status(Instance, model, InstanceStatus.READY)
            model_set_scaling_policy(
                model=model,
                min_replicas=0,
                max_replicas=1,
                scale_down_cooldown_s=0,
                idle_to_zero_s=30,  # no request yet: at once; after the wake it stays up
                hold_timeout_s=180,
                scale_to_zero_mode="power_off",
            )
            _wait_status(Instance, model, InstanceStatus.POWERED_OFF)
            out = []
            _first_token(url, key, model.name, out)
            if out[0]["ttft"] is not None and Instance.objects.filter(llm_model=model).count() == 1:
                power_wakes.append(out[0]["ttft"])
            _progress(f"run {n}: powered off -> first token {out[0]}")

        # Held served vs refused: 30 at once at zero, a queue of 20.
        model = at_zero("burst")
        out = []
        threads = [
            threading.Thread(target=_first_token, args=(url, key, model.name, out))
            for _ in range(30)
        ]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join(timeout=200)
        served = sum(1 for r in out if r["status"] == 200 and r["ttft"] is not None)
        refused = sum(1 for r in out if r["status"] in (429, 503))
        other = len(out) - served - refused
        for model in models:
            model_decommission(model=model)
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline and any(
            m.instances.filter(status__in=HOLDS_MACHINE).exists() for m in models
        ):
            time.sleep(0.2)
    finally:
        group.stop_all()

    print(f"\nAutoscaling benchmark ({os.cpu_count()} cores, Python {sys.version.split()[0]})")
    print(f"{'measure':<52} {'n':>4} {'median':>9} {'min':>9} {'max':>9}")
    for label, values in (
        ("load spike -> scale-up decision, reconcile 1 s (s)", spikes),
        ("first request at zero -> first token, local (s)", wakes),
        ("the same, scaled to zero by power-off (s)", power_wakes),
    ):
        if values:
            print(
                f"{label:<52} {len(values):>4} {statistics.median(values):>9.2f} "
                f"{min(values):>9.2f} {max(values):>9.2f}"
            )
    if wakes and power_wakes:
        ratio = statistics.median(power_wakes) / statistics.median(wakes)
        print(f"{'power-off wake / terminate wake (medians)':<52} {'':>4} {ratio:>9.2f}")
    print(
        f"{'held requests at zero (30 sent, queue 20)':<52} served {served}, refused "
        f"{refused} (429/503 with Retry-After), other {other}"
    )


if __name__ == "__main__":
    main()

"""Commands under faults: a killed worker's command is taken up again within seconds, time
limits hold under compose's pool, and terminated local agents are reaped."""

from __future__ import annotations

import os
import signal
import threading
import time
from pathlib import Path

import pytest
import yaml
from celery import current_app

from apps.instances import orchestrator
from apps.instances.choices import InstanceStatus
from apps.instances.models import Instance, Provider
from apps.instances.orchestrator.leases import PROVISION, command_lease
from apps.instances.providers.base import MachineSpec
from apps.instances.providers.local import LocalAdapter
from apps.models.choices import Engine, ModelStatus
from apps.models.models import LlmModel
from tests.instances.factories import make_instance
from tests.processes import PYTHON, ROOT, wait_for

S = InstanceStatus
HOLD = """
import os, sys, time, django
os.environ.setdefault("DJANGO_SETTINGS_MODULE", "inventiv.settings")
django.setup()
from apps.instances.orchestrator.leases import PROVISION, command_lease
with command_lease(instance_id=sys.argv[1], kind="provision"):
    print("held", flush=True)
    time.sleep(120)
"""


@pytest.fixture
def model(owner_org) -> LlmModel:  # type: ignore[no-untyped-def]
    Provider.objects.get_or_create(name="local", defaults={"kind": "local"})
    return LlmModel.objects.create(
        organization=owner_org, name="bot", engine=Engine.MOCK, model_id="mock/bot",
        status=ModelStatus.DEPLOYING, desired_replicas=1,
    )  # fmt: skip


def _compose_command(service: str) -> list[str]:
    command: list[str] = yaml.safe_load((ROOT / "compose.yaml").read_text())["services"][service][
        "command"
    ]
    return command


@pytest.mark.slow
def test_a_command_whose_worker_was_killed_is_taken_up_again_within_seconds(
    processes, model, settings
):
    # Given a provisioning instance whose command a worker process is working on
    settings.COMMAND_LEASE_S = 1.0
    instance, _ = make_instance(model)
    worker = processes.start(
        "worker-mid-provision", [PYTHON, "-c", HOLD, str(instance.id)], INVENTIV_COMMAND_LEASE_S="1"
    )
    wait_for(lambda: "held" in worker.log(), timeout=30, message="the worker to hold the lease")

    # While it lives, the reconciler leaves its command alone
    time.sleep(1.5)
    assert orchestrator.reconcile()["commands_resent"] == 0

    # When the worker is SIGKILLed mid-command
    worker.kill(signal.SIGKILL)
    killed_at = time.monotonic()

    # Then the command is re-sent within seconds (the lease lapses), not after minutes
    wait_for(
        lambda: orchestrator.reconcile().get("commands_resent"),
        timeout=10,
        interval=0.2,
        message="the command to be re-sent",
    )
    recovered_s = time.monotonic() - killed_at
    assert recovered_s < settings.COMMAND_LEASE_S + 3
    instance.refresh_from_db()
    assert instance.provision_attempts == 1
    # and only once: the next pass does not send it again
    assert orchestrator.reconcile()["commands_resent"] == 0


def test_a_second_delivery_skips_while_a_live_worker_holds_the_command(model):
    # Given a worker holding an instance's command
    instance, _ = make_instance(model)
    held, done = threading.Event(), threading.Event()

    def hold() -> None:
        with command_lease(instance_id=str(instance.id), kind=PROVISION):
            held.set()
            done.wait(10)

    holder = threading.Thread(target=hold)
    holder.start()
    held.wait(5)
    try:
        # When the same command is delivered again, it skips (no second machine)
        assert orchestrator.instance_provision(instance_id=str(instance.id)).startswith("skipped")
    finally:
        done.set()
        holder.join()
    assert Instance.objects.get(id=instance.id).status == S.PROVISIONING


@pytest.mark.slow
def test_a_time_limit_holds_under_the_compose_workers_pool(processes, tmp_path: Path):
    # Given a worker run with compose's pool and concurrency
    command = _compose_command("worker")
    pool = command[command.index("-P") + 1] if "-P" in command else "prefork"
    concurrency = command[command.index("-c") + 1] if "-c" in command else "2"
    worker = processes.start(
        "worker-compose-pool",
        [PYTHON, "-m", "celery", "-A", "inventiv", "worker", "-P", pool, "-c", concurrency,
         "-I", "tests.faults.celery_tasks", "--without-heartbeat", "--without-mingle",
         "--without-gossip", "-l", "INFO", "-n", f"limits-{os.getpid()}@%h"],
    )  # fmt: skip
    wait_for(lambda: "ready." in worker.log(), timeout=60, message="the worker to start")

    # When a task with a 1 s limit runs for 4 s
    marker = tmp_path / "overran"
    current_app.send_task(
        "tests.faults.celery_tasks.overrun_task", kwargs={"marker": str(marker), "seconds": 4}
    )

    # Then it is stopped at its limit: it never finishes, and the worker says why
    wait_for(lambda: "time limit" in worker.log().lower(), timeout=15, message="the limit")
    time.sleep(4)
    assert not marker.exists(), worker.log()[-2000:]


def _zombie_children() -> list[int]:
    zombies = []
    for entry in os.scandir("/proc"):
        if not entry.name.isdigit():
            continue
        try:
            fields = Path(f"/proc/{entry.name}/stat").read_bytes().rsplit(b")", 1)[1].split()
        except OSError:
            continue
        if fields[0] == b"Z" and int(fields[1]) == os.getpid():
            zombies.append(int(entry.name))
    return zombies


def test_local_agents_are_reaped_however_they_end(settings, tmp_path: Path):
    # Given two local "machines" (agents) started by this process
    settings.STATE_DIR = str(tmp_path)
    adapter = LocalAdapter(Provider(name="local-reap", kind="local"))

    def spec(name: str) -> MachineSpec:
        return MachineSpec(
            instance_id=name, instance_type="local", zone="local",
            control_plane_url="http://127.0.0.1:9", bootstrap_token="t", engine_port=9,
            boot_volume_gb=0, user_data="", tags={},
        )  # fmt: skip

    killed = adapter.create_machine(spec("00000000-0000-0000-0000-0000000000a1"))
    ended = adapter.create_machine(spec("00000000-0000-0000-0000-0000000000a2"))

    # When one dies on its own (SIGKILL) and the other is terminated
    os.kill(int(killed.resource_id.removeprefix("local-")), signal.SIGKILL)
    time.sleep(0.3)
    adapter.list_machines()
    adapter.terminate_machine(ended)

    # Then neither is left as a zombie of this process
    assert _zombie_children() == []

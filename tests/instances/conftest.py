from __future__ import annotations

import os
import signal
import sys
from collections.abc import Iterator
from typing import Any

import pytest

from apps.accounts.models import Organization
from apps.instances.choices import InstanceStatus, ProviderKind
from apps.instances.models import Instance, Provider
from apps.instances.providers.local import _tagged_pids
from apps.models.choices import Engine
from apps.models.models import LlmModel
from apps.models.services import model_create
from tests.processes import ProcessGroup, wait_for

# Tight timings so that end-to-end tests take seconds, not minutes.
FAST = {
    "INVENTIV_HEARTBEAT_INTERVAL_S": "0.3",
    "INVENTIV_HEARTBEAT_DEADLINE_S": "2",
    "INVENTIV_UNAVAILABLE_REPLACE_AFTER_S": "1",
    "INVENTIV_RECONCILE_INTERVAL_S": "0.5",
    "INVENTIV_COMMAND_RESEND_AFTER_S": "3",
    "INVENTIV_REPLACEMENT_BACKOFF_S": "0",
    "INVENTIV_DRAIN_DEADLINE_S": "20",
}


@pytest.fixture
def local_provider(db: Any) -> Provider:
    return Provider.objects.create(name="local", kind=ProviderKind.LOCAL)


@pytest.fixture
def mock_model(owner_org: Organization, local_provider: Provider) -> LlmModel:
    return model_create(
        organization=owner_org,
        name="sales-bot",
        engine=Engine.MOCK,
        model_id="meta-llama/Llama-3.1-8B-Instruct",
        gpu_count=0,
        engine_args={"default_max_tokens": 8},
    )


class Platform:
    """The control plane as real processes: web (agent API), worker, beat."""

    def __init__(self, group: ProcessGroup, settings: Any) -> None:
        self.group = group
        for key, value in FAST.items():
            group.env.setdefault(key, value)
        self.web, self.url = group.web()
        group.env["INVENTIV_AGENT_API_URL"] = self.url
        self.worker = group.worker()
        self.beat = group.start(
            "beat",
            [
                sys.executable,
                "-m",
                "celery",
                "-A",
                "inventiv",
                "beat",
                "-l",
                "INFO",
                "-s",
                str(group.log_dir / "beat-schedule"),
            ],
        )

    def restart_worker(self) -> None:
        self.worker = self.group.worker(name=f"worker{len(self.group.procs)}")


@pytest.fixture
def platform(processes: ProcessGroup, settings: Any) -> Iterator[Platform]:
    # The test process itself sends commands (on commit): same timings as the platform.
    settings.HEARTBEAT_INTERVAL_S = float(FAST["INVENTIV_HEARTBEAT_INTERVAL_S"])
    yield Platform(processes, settings)
    leftover = _tagged_pids()
    ids = {str(i) for i in Instance.objects.values_list("id", flat=True)}
    for instance_id, pids in leftover.items():
        if instance_id in ids:
            for pid in pids:
                os.kill(pid, signal.SIGKILL)


def wait_status(instance_ids: list[str] | str, status: InstanceStatus, timeout: float = 30) -> None:
    ids = [instance_ids] if isinstance(instance_ids, str) else instance_ids

    def reached() -> bool:
        return all(Instance.objects.get(id=i).status == status for i in ids)

    wait_for(reached, timeout=timeout, message=f"{ids} to be {status}")


def history(instance_id: str) -> list[str]:
    instance = Instance.objects.get(id=instance_id)
    return [e.to_status for e in instance.events.order_by("id")]


def agent_pids(instance_id: str) -> list[int]:
    return _tagged_pids().get(instance_id, [])

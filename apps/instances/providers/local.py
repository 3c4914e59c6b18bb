"""The local provider: a "machine" is an agent subprocess on this host (mock engine, or vLLM
when installed with a GPU present).

Processes are found again by what they carry, not by memory: each agent (and the engine it
starts, which inherits its environment) has ``INVENTIV_INSTANCE_TAG=<instance id>`` in its
environment, and a record ``<state dir>/local-provider/<instance id>.json`` keeps its pid. So a
control-plane restart, or a worker killed between spawn and record, leaks nothing: the
``/proc`` scan finds every tagged process.
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import subprocess
import sys
import time
from datetime import UTC, datetime
from pathlib import Path

from django.conf import settings

from agent.environment import agent_environment
from apps.instances.providers.base import (
    INSTANCE_TAG,
    InstanceTypeInfo,
    Machine,
    MachineNotFound,
    MachineSpec,
    ProviderAdapter,
    ProviderError,
)
from inventiv.storage import private_dir

TAG_ENV = "INVENTIV_INSTANCE_TAG"
ROOT = Path(__file__).resolve().parents[3]


def _records_dir() -> Path:
    return private_dir(Path(settings.STATE_DIR) / "local-provider")


# Agents this process started: reaped as soon as they exit (however they die), never left as
# zombies; only these pids are waited for, so a pool's own children are never touched.
_spawned: set[int] = set()


def _reap_spawned() -> None:
    for pid in list(_spawned):
        try:
            done, _ = os.waitpid(pid, os.WNOHANG)
        except ChildProcessError:
            done = pid  # not (or no longer) our child
        if done:
            _spawned.discard(pid)


def _tagged_pids() -> dict[str, list[int]]:
    """instance id -> pids of live processes carrying our tag (agents and their engines)."""
    _reap_spawned()
    found: dict[str, list[int]] = {}
    needle = (TAG_ENV + "=").encode()
    for entry in os.scandir("/proc"):
        if not entry.name.isdigit():
            continue
        try:
            with open(f"/proc/{entry.name}/environ", "rb") as fh:
                environ = fh.read()
            with open(f"/proc/{entry.name}/stat", "rb") as fh:
                state = fh.read().rsplit(b")", 1)[1].split()[0]
        except OSError:
            continue
        if state == b"Z":  # zombie: already dead, waiting to be reaped
            continue
        for var in environ.split(b"\0"):
            if var.startswith(needle):
                found.setdefault(var[len(needle) :].decode(), []).append(int(entry.name))
                break
    return found


def _reap(pid: int) -> None:
    with contextlib.suppress(ChildProcessError, OSError):
        os.waitpid(pid, os.WNOHANG)


class LocalAdapter(ProviderAdapter):
    kind = "local"

    def list_instance_types(self) -> list[InstanceTypeInfo]:
        return []

    def _machine(self, instance_id: str, pids: list[int]) -> Machine:
        record_path = _records_dir() / f"{instance_id}.json"
        created_at = None
        resource_id = f"local-{min(pids)}"
        if record_path.exists():
            with contextlib.suppress(ValueError, OSError):
                record = json.loads(record_path.read_text())
                resource_id = f"local-{record['pid']}"
                created_at = datetime.fromisoformat(record["started_at"])
        return Machine(
            resource_id=resource_id,
            instance_id=instance_id,
            state="running",
            zone="local",
            public_ip=None,
            private_ip="127.0.0.1",
            created_at=created_at,
        )

    def create_machine(self, spec: MachineSpec) -> Machine:
        existing = self.find_machine(spec.instance_id)
        if existing is not None:
            return existing
        log_path = _records_dir() / f"{spec.instance_id}.log"
        # An allow-listed environment: the control plane's secrets (SECRET_KEY, encryption
        # keys, DATABASE_URL, cloud credentials...) never reach the agent nor its engine.
        env = agent_environment(
            os.environ,
            {
                TAG_ENV: spec.instance_id,
                "INVENTIV_CONTROL_PLANE_URL": spec.control_plane_url,
                "INVENTIV_BOOTSTRAP_TOKEN": spec.bootstrap_token,
                "INVENTIV_ADVERTISE_HOST": "127.0.0.1",
                "PYTHONUNBUFFERED": "1",
            },
        )
        try:
            with open(log_path, "ab") as log:
                proc = subprocess.Popen(
                    [sys.executable, "-m", "agent"],
                    cwd=ROOT,
                    env=env,
                    stdout=log,
                    stderr=subprocess.STDOUT,
                    stdin=subprocess.DEVNULL,
                    start_new_session=True,
                )
        except OSError as exc:
            raise ProviderError(f"could not start the agent: {exc}") from exc
        _spawned.add(proc.pid)
        started_at = datetime.now(UTC)
        record = {"pid": proc.pid, "started_at": started_at.isoformat(), "port": spec.engine_port}
        tmp = _records_dir() / f"{spec.instance_id}.json.tmp"
        tmp.write_text(json.dumps(record))
        tmp.replace(_records_dir() / f"{spec.instance_id}.json")
        return Machine(
            resource_id=f"local-{proc.pid}",
            instance_id=spec.instance_id,
            state="running",
            zone="local",
            private_ip="127.0.0.1",
            created_at=started_at,
        )

    def find_machine(self, instance_id: str) -> Machine | None:
        pids = _tagged_pids().get(instance_id)
        return self._machine(instance_id, pids) if pids else None

    def list_machines(self) -> list[Machine]:
        return [self._machine(iid, pids) for iid, pids in _tagged_pids().items()]

    def get_machine(self, resource_id: str) -> Machine:
        """The instance whose tagged processes include pid ``N`` of ``local-N`` (a pid reused
        by an untagged process is not ours: MachineNotFound). No power actions: a "machine" is
        a process tree, to terminate and provision again."""
        pid = resource_id.removeprefix("local-")
        if not pid.isdigit():
            raise MachineNotFound(f"{resource_id!r} is not a local machine id")
        for instance_id, pids in _tagged_pids().items():
            if int(pid) in pids:
                return self._machine(instance_id, pids)
        raise MachineNotFound(f"no tagged process {pid} on this host")

    def terminate_machine(self, machine: Machine) -> None:
        """SIGTERM every process tagged with the instance (the agent stops its engine cleanly),
        SIGKILL what is left after 10 s, then forget the record. Idempotent."""
        instance_id = machine.instance_id
        if instance_id is None:
            return
        deadline = time.monotonic() + 10
        sig = signal.SIGTERM
        while True:
            pids = _tagged_pids().get(instance_id, [])
            if not pids:
                break
            for pid in pids:
                with contextlib.suppress(ProcessLookupError, PermissionError):
                    os.kill(pid, sig)
                _reap(pid)
            if time.monotonic() > deadline:
                sig = signal.SIGKILL
            time.sleep(0.05)
        _reap_spawned()
        for suffix in (".json", ".json.tmp"):
            with contextlib.suppress(FileNotFoundError):
                (_records_dir() / f"{instance_id}{suffix}").unlink()


__all__ = ["INSTANCE_TAG", "LocalAdapter"]

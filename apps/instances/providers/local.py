"""The local provider: a "machine" is an agent subprocess on this host (mock engine, or vLLM
when installed with a GPU present).

Processes are found again by what they carry, not by memory: each agent (and the engine it
starts, which inherits its environment) has ``INVENTIV_INSTANCE_TAG=<instance id>`` in its
environment, and a record ``<state dir>/local-provider/<instance id>.json`` keeps its pid. So a
control-plane restart, or a worker killed between spawn and record, leaks nothing: the
``/proc`` scan finds every tagged process.

Power actions (scale to zero by power-off): powering off stops the processes and keeps the
record (``stopped``) and the agent's state directory, the local "disk"; powering on starts the
agent again, which resumes with its stored credential. The machine keeps its resource id.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import signal
import subprocess
import sys
import time
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from django.conf import settings

from agent.environment import agent_environment
from apps.instances.providers.base import (
    INSTANCE_TAG,
    InstanceTypeInfo,
    Machine,
    MachineNotFound,
    MachineSpec,
    PowerAction,
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
        created_at = None
        resource_id = f"local-{min(pids)}" if pids else ""
        record = _read_record(instance_id)
        if record is not None:
            with contextlib.suppress(KeyError, ValueError):
                resource_id = record.get("resource_id") or f"local-{record['pid']}"
                created_at = datetime.fromisoformat(record["started_at"])
        return Machine(
            resource_id=resource_id,
            instance_id=instance_id,
            state="running" if pids else "stopped",
            zone="local",
            public_ip=None,
            private_ip="127.0.0.1",
            created_at=created_at,
        )

    def create_machine(self, spec: MachineSpec) -> Machine:
        existing = self.find_machine(spec.instance_id)
        if existing is not None:
            return existing
        proc = _spawn(spec.instance_id, spec.control_plane_url, spec.bootstrap_token)
        started_at = datetime.now(UTC)
        resource_id = f"local-{proc.pid}"
        _write_record(
            spec.instance_id,
            {
                "pid": proc.pid,
                "resource_id": resource_id,
                "started_at": started_at.isoformat(),
                "port": spec.engine_port,
                "control_plane_url": spec.control_plane_url,
            },
        )
        return Machine(
            resource_id=resource_id,
            instance_id=spec.instance_id,
            state="running",
            zone="local",
            private_ip="127.0.0.1",
            created_at=started_at,
        )

    def find_machine(self, instance_id: str) -> Machine | None:
        """The instance's processes, or its record alone when powered off."""
        pids = _tagged_pids().get(instance_id)
        if pids or _read_record(instance_id, stopped=True) is not None:
            return self._machine(instance_id, pids or [])
        return None

    def list_machines(self) -> list[Machine]:
        found = _tagged_pids()
        stopped = [
            path.name.removesuffix(".json")
            for path in _records_dir().glob("*.json")
            if path.name.removesuffix(".json") not in found
        ]
        return [self._machine(iid, pids) for iid, pids in found.items()] + [
            self._machine(iid, []) for iid in stopped if _read_record(iid, stopped=True)
        ]

    def get_machine(self, resource_id: str) -> Machine:
        """The instance whose record carries ``local-N`` (kept across power cycles), or whose
        tagged processes include pid ``N`` (a pid reused by an untagged process is not ours:
        MachineNotFound)."""
        pid = resource_id.removeprefix("local-")
        if not pid.isdigit():
            raise MachineNotFound(f"{resource_id!r} is not a local machine id")
        tagged = _tagged_pids()
        for path in _records_dir().glob("*.json"):
            instance_id = path.name.removesuffix(".json")
            record = _read_record(instance_id)
            if (
                record is not None
                and record.get("resource_id") == resource_id
                and (instance_id in tagged or record.get("stopped"))
            ):
                return self._machine(instance_id, tagged.get(instance_id, []))
        for instance_id, pids in tagged.items():
            if int(pid) in pids:
                return self._machine(instance_id, pids)
        raise MachineNotFound(f"no tagged process {pid} on this host")

    def power(self, machine: Machine, action: PowerAction) -> Machine:
        """Power off: stop the agent and its engine (SIGTERM: the agent keeps its stored
        credential), keeping the record and the agent's state directory: the "disk". Power
        on: start the agent again from them; it resumes without a bootstrap token. Reboot:
        both. Idempotent for power on and off."""
        instance_id = machine.instance_id
        record = _read_record(instance_id) if instance_id else None
        if instance_id is None or record is None:
            raise MachineNotFound(f"no local machine {machine.resource_id}")
        action = PowerAction(action)
        if action in (PowerAction.POWEROFF, PowerAction.REBOOT):
            _write_record(instance_id, {**record, "stopped": True})
            _stop_tagged(instance_id)
        wake = action in (PowerAction.POWERON, PowerAction.REBOOT)
        if wake and not _tagged_pids().get(instance_id):
            proc = _spawn(instance_id, str(record.get("control_plane_url", "")), "")
            _write_record(instance_id, {**record, "pid": proc.pid, "stopped": False})
        found = self.find_machine(instance_id)
        if found is None:
            raise MachineNotFound(f"local machine {machine.resource_id} vanished")
        return found

    def terminate_machine(self, machine: Machine) -> None:
        """SIGTERM every process tagged with the instance (the agent stops its engine cleanly),
        SIGKILL what is left after 10 s, then forget the record and the agent's state
        directory. Idempotent."""
        instance_id = machine.instance_id
        if instance_id is None:
            return
        _stop_tagged(instance_id)
        for suffix in (".json", ".json.tmp"):
            with contextlib.suppress(FileNotFoundError):
                (_records_dir() / f"{instance_id}{suffix}").unlink()
        shutil.rmtree(_records_dir() / f"{instance_id}.state", ignore_errors=True)


def _read_record(instance_id: str, *, stopped: bool = False) -> dict[str, Any] | None:
    """The record of a local machine (with ``stopped``: only if it is powered off)."""
    try:
        record = json.loads((_records_dir() / f"{instance_id}.json").read_text())
    except (OSError, ValueError):
        return None
    if not isinstance(record, dict) or (stopped and not record.get("stopped")):
        return None
    return record


def _write_record(instance_id: str, record: dict[str, Any]) -> None:
    tmp = _records_dir() / f"{instance_id}.json.tmp"
    tmp.write_text(json.dumps(record))
    tmp.replace(_records_dir() / f"{instance_id}.json")


def _spawn(
    instance_id: str, control_plane_url: str, bootstrap_token: str
) -> subprocess.Popen[bytes]:
    """Start an agent tagged with ``instance_id``; its state directory (the stored credential,
    what a powered-on machine resumes with) is ``<records>/<instance id>.state``."""
    log_path = _records_dir() / f"{instance_id}.log"
    state_dir = private_dir(_records_dir() / f"{instance_id}.state")
    # An allow-listed environment: the control plane's secrets (SECRET_KEY, encryption
    # keys, DATABASE_URL, cloud credentials...) never reach the agent nor its engine.
    env = agent_environment(
        os.environ,
        {
            TAG_ENV: instance_id,
            "INVENTIV_CONTROL_PLANE_URL": control_plane_url,
            "INVENTIV_BOOTSTRAP_TOKEN": bootstrap_token,
            "INVENTIV_AGENT_STATE_DIR": str(state_dir),
            "INVENTIV_ADVERTISE_HOST": "127.0.0.1",
            "INVENTIV_AGENT_EXIT_AFTER_OFFLINE_S": str(settings.LOCAL_AGENT_EXIT_AFTER_OFFLINE_S),
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
    return proc


def _stop_tagged(instance_id: str) -> None:
    """SIGTERM every process tagged with the instance, SIGKILL what is left after 10 s."""
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


__all__ = ["INSTANCE_TAG", "LocalAdapter"]

"""``python -m agent.host``: the on-premise host agent.

Joins the control plane once with a one-time join token (the credential it gets is kept in a
root-only state file, so restarts need no new token), then polls
``/internal/agent/v1/hosts/poll``: it reports its GPUs and the state of each instance agent it
runs, and receives the assignments to run or stop. For each assignment to run it starts a
regular instance agent, ``python -m agent --control-plane URL`` with the instance's one-time
bootstrap token in ``INVENTIV_BOOTSTRAP_TOKEN`` (not on the command line, where ``ps`` shows
it) and ``CUDA_VISIBLE_DEVICES`` set to the GPUs assigned; it stops it (SIGTERM to its process
group, then SIGKILL) when told. Pull-based: works behind NAT.

Exit codes: 0 stopped by a signal, 2 usage error, 3 join refused or credential revoked.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import logging
import os
import signal
import socket
import subprocess
import sys
import threading
from pathlib import Path

import httpx

from agent import __version__
from agent.environment import agent_environment
from agent.gpus import detect_gpus
from agent.host_protocol import (
    JOIN_PATH,
    POLL_PATH,
    AssignmentAction,
    AssignmentReport,
    HostGpu,
    HostJoinRequest,
    HostJoinResponse,
    HostPoll,
    HostPollResponse,
    ProcessState,
)
from agent.tunnel_probe import ProbeListener

log = logging.getLogger("agent.host")
STOP_GRACE_S = 30.0


class Refused(Exception):
    """The control plane refused our token or credential."""


def _refusal(response: httpx.Response) -> str:
    """``HTTP 400 unsupported_protocol: ...`` from the control plane's error envelope."""
    try:
        error = response.json()["error"]
        return f"HTTP {response.status_code} {error.get('code')}: {error.get('message')}"
    except (ValueError, KeyError, TypeError, AttributeError):
        return f"HTTP {response.status_code}"


def _default_advertise_host() -> str:
    with contextlib.suppress(OSError), socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
        sock.connect(("192.0.2.1", 9))  # no packet is sent: this picks the outgoing interface
        return str(sock.getsockname()[0])
    return "127.0.0.1"


class HostAgent:
    def __init__(
        self,
        *,
        control_plane: str,
        join_token: str | None,
        state_file: Path,
        advertise_host: str,
        gpus: list[HostGpu],
        probe_port: int | None = 0,
    ) -> None:
        self.control_plane = control_plane.rstrip("/")
        self.join_token = join_token
        self.state_file = state_file
        self.advertise_host = advertise_host
        self.gpus = gpus
        self.probe_port = probe_port  # the dial-back probe's port at join (0: any; None: none)
        self.stop_event = threading.Event()
        self.children: dict[int, subprocess.Popen[bytes]] = {}
        self.exited: dict[int, int] = {}
        self.stopped: set[int] = set()
        self.client = httpx.Client(timeout=httpx.Timeout(15.0, connect=5.0))

    # --- credential -----------------------------------------------------------------------------

    def _credential(self) -> str:
        if self.state_file.exists():
            data = json.loads(self.state_file.read_text())
            if data.get("control_plane") == self.control_plane and data.get("credential"):
                return str(data["credential"])
        if not self.join_token:
            raise Refused("no saved credential and no join token")
        # The control plane dials it back during the join: if it cannot, the host's engines are
        # served through tunnels (agent.tunnel_probe). Open only while joining.
        probe = ProbeListener(port=self.probe_port) if self.probe_port is not None else None
        request = HostJoinRequest(
            join_token=self.join_token,
            hostname=socket.gethostname(),
            agent_version=__version__,
            advertise_host=self.advertise_host,
            gpus=self.gpus,
            probe_port=probe.port if probe is not None else None,
        )
        try:
            response = self.client.post(self.control_plane + JOIN_PATH, json=request.model_dump())
        finally:
            if probe is not None:
                probe.close()
        if response.status_code in (401, 403):
            raise Refused("join token refused (invalid, expired or already used)")
        if 400 <= response.status_code < 500 and response.status_code not in (408, 429):
            raise Refused(f"join refused ({_refusal(response)})")
        response.raise_for_status()
        joined = HostJoinResponse.model_validate_json(response.content)
        self.state_file.parent.mkdir(parents=True, exist_ok=True)
        fd = os.open(self.state_file, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(fd, "w") as handle:
            json.dump(
                {
                    "control_plane": self.control_plane,
                    "credential": joined.credential,
                    "host_id": joined.host_id,
                },
                handle,
            )
        log.info("joined as host %s", joined.host_id)
        return joined.credential

    # --- processes --------------------------------------------------------------------------------

    def _reports(self) -> list[AssignmentReport]:
        reports: list[AssignmentReport] = []
        for assignment_id, proc in list(self.children.items()):
            code = proc.poll()
            if code is None:
                reports.append(AssignmentReport(id=assignment_id, state=ProcessState.RUNNING))
            else:
                log.warning("instance agent of assignment %s exited with %s", assignment_id, code)
                del self.children[assignment_id]
                self.exited[assignment_id] = code
        reports += [
            AssignmentReport(id=i, state=ProcessState.EXITED, exit_code=c)
            for i, c in self.exited.items()
        ]
        reports += [AssignmentReport(id=i, state=ProcessState.STOPPED) for i in self.stopped]
        return reports

    def _start(self, assignment_id: int, token: str, gpus: list[int], url: str) -> None:
        # An allow-listed environment (agent/environment.py): the host's own secrets (its join
        # token, anything else in the host agent's environment) never reach instance agents.
        env = agent_environment(
            os.environ,
            {
                "INVENTIV_BOOTSTRAP_TOKEN": token,
                "INVENTIV_CONTROL_PLANE_URL": url,
                "INVENTIV_ADVERTISE_HOST": self.advertise_host,
                "CUDA_VISIBLE_DEVICES": ",".join(str(i) for i in gpus),
            },
        )
        # Instance agents under a host agent keep their credential in memory only: several
        # sharing one state directory would overwrite each other's credential.
        env.pop("INVENTIV_AGENT_STATE_DIR", None)
        self.children[assignment_id] = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "agent",
                "--control-plane",
                url,
                "--advertise-host",
                self.advertise_host,
            ],
            env=env,
            start_new_session=True,
        )
        log.info("started instance agent for assignment %s on GPUs %s", assignment_id, gpus)

    def _stop(self, assignment_id: int) -> None:
        proc = self.children.pop(assignment_id, None)
        if proc is not None and proc.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(proc.pid, signal.SIGTERM)
            try:
                proc.wait(STOP_GRACE_S)
            except subprocess.TimeoutExpired:
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(proc.pid, signal.SIGKILL)
                proc.wait(5)
        self.exited.pop(assignment_id, None)
        self.stopped.add(assignment_id)
        log.info("stopped assignment %s", assignment_id)

    def _apply(self, response: HostPollResponse) -> None:
        listed = {a.id for a in response.assignments}
        # What the control plane no longer lists was recorded as stopped or exited: forget it.
        self.stopped &= listed
        for assignment_id in set(self.exited) - listed:
            del self.exited[assignment_id]
        url = response.control_plane_url or self.control_plane
        for assignment in response.assignments:
            if assignment.action == AssignmentAction.STOP:
                if assignment.id not in self.stopped:
                    self._stop(assignment.id)
            elif (
                assignment.id not in self.children
                and assignment.id not in self.exited
                and assignment.id not in self.stopped
                and assignment.bootstrap_token
            ):
                self._start(assignment.id, assignment.bootstrap_token, assignment.gpu_indices, url)

    def stop_all(self) -> None:
        for assignment_id in list(self.children):
            self._stop(assignment_id)

    # --- main loop --------------------------------------------------------------------------------

    def run(self) -> int:
        try:
            credential = self._credential()
        except Refused as exc:
            log.error("%s", exc)
            return 3
        interval = 5.0
        try:
            while not self.stop_event.is_set():
                poll = HostPoll(gpus=self.gpus, assignments=self._reports())
                try:
                    response = self.client.post(
                        self.control_plane + POLL_PATH,
                        json=poll.model_dump(mode="json"),
                        headers={"Authorization": f"Bearer {credential}"},
                    )
                    if response.status_code in (401, 403):
                        log.error("host credential revoked: stopping everything")
                        return 3
                    if 400 <= response.status_code < 500 and response.status_code != 429:
                        log.error("poll refused (%s); retrying", _refusal(response))
                    response.raise_for_status()
                    answer = HostPollResponse.model_validate_json(response.content)
                    interval = answer.poll_interval_s
                    self._apply(answer)
                except httpx.HTTPError as exc:
                    log.warning("poll failed (%s); retrying", type(exc).__name__)
                self.stop_event.wait(interval)
            return 0
        finally:
            self.stop_all()
            self.client.close()


def _gpus(raw: str | None) -> list[HostGpu]:
    if raw:
        return [HostGpu.model_validate(g) for g in json.loads(raw)]
    return [
        HostGpu(index=i, name=g.name, memory_mib=g.memory_mib) for i, g in enumerate(detect_gpus())
    ]


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="python -m agent.host",
        description="Inventiv host agent: joins an on-premise provider and runs instance agents.",
    )
    env = os.environ.get
    p.add_argument("--control-plane", metavar="URL", default=env("INVENTIV_CONTROL_PLANE_URL"))
    p.add_argument(
        "--join-token",
        metavar="TOKEN",
        default=env("INVENTIV_JOIN_TOKEN"),
        help="one-time join token; prefer the env var INVENTIV_JOIN_TOKEN",
    )
    p.add_argument(
        "--state-file",
        metavar="PATH",
        default=env("INVENTIV_HOST_STATE_FILE") or "/var/lib/inventiv/host.json",
    )
    p.add_argument("--advertise-host", metavar="HOST", default=env("INVENTIV_ADVERTISE_HOST"))
    p.add_argument(
        "--gpus-json",
        metavar="JSON",
        default=env("INVENTIV_HOST_GPUS"),
        help='GPUs to offer instead of nvidia-smi\'s, e.g. [{"index":0,"name":"L4",'
        '"memory_mib":23034}]',
    )
    p.add_argument(
        "--probe-port",
        metavar="PORT",
        type=int,
        default=int(env("INVENTIV_PROBE_PORT") or 0),
        help="port of the dial-back probe while joining (0: any free port; -1: none, the host "
        "is then served direct unless its reachability says tunnel)",
    )
    p.add_argument("--log-level", default=(env("INVENTIV_LOG_LEVEL") or "info").lower())
    return p


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if not args.control_plane:
        parser.error("--control-plane (or INVENTIV_CONTROL_PLANE_URL) is required")
    logging.basicConfig(
        stream=sys.stderr,
        level=args.log_level.upper(),
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
    )
    logging.getLogger("httpx").setLevel(logging.WARNING)
    agent = HostAgent(
        control_plane=args.control_plane,
        join_token=args.join_token,
        state_file=Path(args.state_file),
        advertise_host=args.advertise_host or _default_advertise_host(),
        gpus=_gpus(args.gpus_json),
        probe_port=args.probe_port if args.probe_port >= 0 else None,
    )
    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, lambda *_: agent.stop_event.set())
    return agent.run()


if __name__ == "__main__":
    raise SystemExit(main())

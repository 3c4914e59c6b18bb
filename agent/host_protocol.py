"""The wire protocol between an on-premise host agent (``python -m agent.host``) and the
control plane, version 1. Both sides import it; it never imports Django.

1. The operator runs the join command on the host: ``POST {cp}/internal/agent/v1/hosts/join``
   with :class:`HostJoinRequest` and the one-time join token; the answer carries the host's
   credential, kept in a root-only state file.
2. Every ``poll_interval_s`` the host sends :class:`HostPoll` (``Authorization: Bearer
   <credential>``) reporting its GPUs and each assignment's process state; the answer,
   :class:`HostPollResponse`, lists the assignments it must run or stop. For each one to run
   the host starts a regular instance agent (``python -m agent``) with the instance's one-time
   bootstrap token, so the instance then speaks the ordinary agent protocol.

``protocol_version`` (:data:`HOST_PROTOCOL_VERSION`) is checked first on join and on poll: a
version the control plane cannot speak is refused with HTTP 400 ``unsupported_protocol``.
``agent_version`` is the release of the agent package (``agent.__version__``); the control
plane logs a warning when it differs from its own. See :mod:`agent.protocol` for the rules.
"""

from __future__ import annotations

from enum import StrEnum

from pydantic import BaseModel, ConfigDict, Field

HOST_PROTOCOL_VERSION = 1
JOIN_PATH = "/internal/agent/v1/hosts/join"
POLL_PATH = "/internal/agent/v1/hosts/poll"


class _Message(BaseModel):
    model_config = ConfigDict(extra="ignore", frozen=True)


class HostGpu(_Message):
    index: int = Field(ge=0)
    name: str
    memory_mib: int = Field(ge=0)


class HostJoinRequest(_Message):
    protocol_version: int = HOST_PROTOCOL_VERSION
    join_token: str
    hostname: str
    agent_version: str = ""
    advertise_host: str
    gpus: list[HostGpu] = Field(default_factory=list)
    # The port of the host's dial-back probe listener (agent.tunnel_probe) at advertise_host;
    # None: not offered (the host's reachability then stays unknown: direct unless set).
    probe_port: int | None = Field(default=None, ge=1, le=65535)


class HostJoinResponse(_Message):
    protocol_version: int = HOST_PROTOCOL_VERSION
    host_id: int
    credential: str
    poll_interval_s: float


class AssignmentAction(StrEnum):
    RUN = "run"
    STOP = "stop"


class ProcessState(StrEnum):
    RUNNING = "running"  # the instance agent process runs
    EXITED = "exited"  # it ended on its own (see exit_code)
    STOPPED = "stopped"  # stopped on request: nothing of it is left on the host


class AssignmentReport(_Message):
    id: int
    state: ProcessState
    exit_code: int | None = None


class HostPoll(_Message):
    protocol_version: int = HOST_PROTOCOL_VERSION
    gpus: list[HostGpu] = Field(default_factory=list)
    assignments: list[AssignmentReport] = Field(default_factory=list)


class Assignment(_Message):
    id: int
    instance_id: str
    action: AssignmentAction
    engine_port: int
    gpu_indices: list[int] = Field(default_factory=list)
    # Only until the host reports the process running; one-time and short-lived.
    bootstrap_token: str | None = None


class HostPollResponse(_Message):
    protocol_version: int = HOST_PROTOCOL_VERSION
    poll_interval_s: float
    control_plane_url: str
    assignments: list[Assignment] = Field(default_factory=list)

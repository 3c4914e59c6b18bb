"""The wire protocol between the agent and the control plane, version 1.

Both sides import this module: the agent (which never imports Django) and the control plane's
internal agent API. Everything that crosses the wire is one of these models, serialised as JSON.

Flow (pull-based, works behind NAT):

1. The machine boots with a one-time, short-lived bootstrap token bound to one instance.
   ``POST {control_plane}/internal/agent/v1/register`` with :class:`RegisterRequest`.
   The answer, :class:`RegisterResponse`, carries the per-instance credential the agent uses
   from then on as ``Authorization: Bearer <credential>``, and the first desired state.
2. Every ``heartbeat_interval_s`` the agent sends :class:`Heartbeat` to
   ``POST {control_plane}/internal/agent/v1/heartbeat``; the answer, :class:`HeartbeatResponse`,
   carries the desired state (serve this engine, drain, stop).
3. A 401 or 403 on heartbeat means the control plane no longer knows this instance: the agent
   stops its engine and exits. Errors are OpenAI-shaped JSON: ``{"error": {"message", "type",
   "param", "code"}}``.

Two versions travel in every request, and they mean different things:

* ``protocol_version`` (:data:`PROTOCOL_VERSION`) is the shape of these messages. The control
  plane checks it before anything else and refuses a version it cannot speak with HTTP 400
  ``unsupported_protocol`` (on register and heartbeat alike); it is raised only for a change an
  older peer cannot parse. Fields are only ever added with a default, so a message from an
  older agent of the same protocol version still parses (``extra="ignore"`` lets an older
  control plane read a newer agent's message too).
* ``agent_version`` is the release of the agent package (``agent.__version__``, the one version
  of the project). The control plane records it on the instance and warns when it differs from
  its own; it never refuses on it. ``""`` means "not reported" (an agent older than the field).
"""

from __future__ import annotations

from datetime import UTC, datetime
from enum import StrEnum
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field

PROTOCOL_VERSION = 1
REGISTER_PATH = "/internal/agent/v1/register"
HEARTBEAT_PATH = "/internal/agent/v1/heartbeat"
TLS_FINGERPRINT_PATTERN = r"^(?:[0-9a-f]{64})?$"


class _Message(BaseModel):
    model_config = ConfigDict(extra="ignore", frozen=True)


class GpuInfo(_Message):
    name: str
    memory_mib: int = Field(ge=0)


class EngineSpec(_Message):
    """What the engine must serve. ``api_key`` is the per-instance engine secret.

    ``dtype`` and ``quantization`` are the model code's precision and weight quantization
    (validated by ``agent.engine_args.validate_precision``; "" = none or the checkpoint's own).
    ``hf_token`` is the organization's Hugging Face token for gated or private models ("" =
    none): it reaches the engine through its environment only and never appears in a repr,
    a log line or argv. Tensor and pipeline parallelism and the context length travel in
    ``engine_args`` (``tensor_parallel_size``, ``pipeline_parallel_size``, ``max_model_len``),
    filled in by the control plane from the machine the instance landed on."""

    engine: Literal["vllm", "tgi", "mock"]
    model_id: str
    served_model_name: str
    engine_args: dict[str, Any] = Field(default_factory=dict)
    api_key: str = Field(repr=False)
    dtype: str = "auto"
    quantization: str = ""
    hf_token: str = Field(default="", repr=False)
    host: str = "0.0.0.0"
    port: int = Field(ge=1, le=65535)
    # The sealed data plane (agent.front): the engine binds 127.0.0.1 on a port of the agent's
    # choosing and the agent serves ``host:port`` itself, over TLS with its own certificate,
    # checking ``api_key`` and forwarding only the inference paths. False: the engine binds
    # ``host:port`` directly (plain HTTP; the local provider's default).
    sealed: bool = False


class DesiredAction(StrEnum):
    SERVE = "serve"  # run the engine described by ``engine``
    DRAIN = "drain"  # accept no new work; report DRAINED once in-flight requests are done
    STOP = "stop"  # stop the engine and exit


class Desired(_Message):
    action: DesiredAction
    engine: EngineSpec | None = None
    # The machine cannot be dialed: keep a tunnel (agent.tunnel) open to each of these gateway
    # processes (http(s):// or ws(s):// base URLs); empty: the gateways dial the engine.
    tunnel: list[str] = Field(default_factory=list)


class AgentState(StrEnum):
    STARTING = "starting"  # engine process started, not yet healthy/listed/warmed up
    READY = "ready"  # engine healthy, model listed, warm-up completion answered
    ENGINE_DOWN = "engine_down"  # engine crashed or unhealthy; the agent is restarting it
    DRAINING = "draining"  # desired=drain, requests still in flight
    DRAINED = "drained"  # desired=drain and nothing in flight
    STOPPING = "stopping"  # shutting down (desired=stop or SIGTERM)


class RegisterRequest(_Message):
    protocol_version: int = PROTOCOL_VERSION
    bootstrap_token: str
    agent_version: str
    hostname: str
    gpus: list[GpuInfo] = Field(default_factory=list)
    # Base URL at which the engine will be reachable, as the machine sees itself. The control
    # plane may prefer the address the provider reported.
    advertise_host: str | None = None
    # SHA-256 of the DER certificate of the agent's TLS front (64 lowercase hex digits; "" from
    # an agent without one): the gateways pin it when they dial a sealed instance.
    tls_fingerprint: str = Field(default="", pattern=TLS_FINGERPRINT_PATTERN)


class RegisterResponse(_Message):
    protocol_version: int = PROTOCOL_VERSION
    instance_id: str
    credential: str
    heartbeat_interval_s: float
    desired: Desired


class EngineStatus(_Message):
    healthy: bool = False
    model_listed: bool = False
    warmed_up: bool = False
    restarts: int = 0
    pid: int | None = None
    last_error: str | None = None
    # The API the warm-up found the model serves: "chat", "completion" or "embedding" ("" until
    # warmed up), agent.probe.
    task: str = ""


class EngineMetrics(_Message):
    """Scraped from the engine's Prometheus ``/metrics`` (vLLM's names; TGI's are mapped onto
    them by ``agent.metrics``: tgi_batch_current_size, tgi_queue_size, ...)."""

    requests_running: float = 0.0  # vllm:num_requests_running
    requests_waiting: float = 0.0  # vllm:num_requests_waiting
    kv_cache_usage: float = 0.0  # vllm:kv_cache_usage_perc (0..1), or gpu_cache_usage_perc
    prompt_tokens_total: float = 0.0  # vllm:prompt_tokens_total
    generation_tokens_total: float = 0.0  # vllm:generation_tokens_total


def _now() -> datetime:
    return datetime.now(UTC)


class Heartbeat(_Message):
    protocol_version: int = PROTOCOL_VERSION
    instance_id: str
    # The agent package's release; "" from an agent older than this field (the control plane
    # then keeps the version given at registration). ``ControlPlaneClient`` fills it in.
    agent_version: str = ""
    state: AgentState
    engine: EngineStatus = Field(default_factory=EngineStatus)
    metrics: EngineMetrics | None = None
    gpus: list[GpuInfo] = Field(default_factory=list)
    sent_at: datetime = Field(default_factory=_now)
    # As in :class:`RegisterRequest`: a restarted agent with a new certificate says so here.
    tls_fingerprint: str = Field(default="", pattern=TLS_FINGERPRINT_PATTERN)


class HeartbeatResponse(_Message):
    protocol_version: int = PROTOCOL_VERSION
    heartbeat_interval_s: float
    desired: Desired

"""The control plane's side of the agent protocol (``agent/protocol.py``): registration with a
one-time bootstrap token, heartbeats, and the desired state each answer carries.

Versions: a ``protocol_version`` this control plane cannot speak never reaches these services
(the API refuses it with ``unsupported_protocol``). The ``agent_version`` an agent reports is
recorded on the instance; one that differs from ``inventiv.__version__`` is accepted with a
warning (logged, and said in the registration's history row)."""

from __future__ import annotations

import functools
import hmac
import json
import logging
import os
import threading
import time
import uuid
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC
from typing import Any

from django.conf import settings
from django.core.cache import cache
from django.db import connection, transaction
from django.utils import timezone
from django.utils.dateparse import parse_datetime

from agent.protocol import (
    AgentState,
    Desired,
    DesiredAction,
    EngineSpec,
    Heartbeat,
    HeartbeatResponse,
    RegisterRequest,
    RegisterResponse,
)
from apps.instances.agents.versions import CONTROL_PLANE_VERSION, agent_version_mismatch
from apps.instances.choices import POWERED_DOWN, InstanceStatus, ProviderKind
from apps.instances.models import Instance, OnPremAssignment, Provider
from apps.instances.models.onprem import tunneled_instance_ids
from apps.instances.providers.sizing import TENSOR_PARALLEL_SIZES
from apps.instances.selectors import heartbeat_lease_key, heartbeat_persist_s
from apps.instances.services import instance_finish_drain, instance_transition
from apps.models.models import HubToken, LlmModel
from inventiv import crypto
from inventiv.errors import ApplicationError

logger = logging.getLogger(__name__)
S = InstanceStatus
SERVE_STATUSES = frozenset({S.PROVISIONING, S.BOOTING, S.STARTING, S.READY, S.UNAVAILABLE})


class AgentAuthError(ApplicationError):
    """Bad, expired or used bootstrap token; unknown or revoked credential. One message for
    all, so that a caller learns nothing about which."""

    code = "invalid_agent_credentials"


def machine_gpu_count(instance: Instance) -> int:
    """GPUs of the machine the instance landed on: its instance type's, else its on-premise
    assignment's, else (no placement recorded: a local machine) what the model code asks."""
    if instance.instance_type is not None and instance.instance_type.gpu_count:
        return int(instance.instance_type.gpu_count)
    if instance.provider.kind == ProviderKind.ONPREM:
        assignment = (
            OnPremAssignment.objects.filter(instance_id=instance.id)
            .exclude(state=OnPremAssignment.State.STOPPED)
            .order_by("-id")
            .values_list("gpu_indices", flat=True)
            .first()
        )
        if assignment:
            return len(assignment)
    return max(int(instance.llm_model.gpu_count), 1)


def parallelism_for(*, gpus: int, engine_args: dict[str, Any]) -> dict[str, int]:
    """``tensor_parallel_size`` (and ``pipeline_parallel_size`` when asked) for a machine of
    ``gpus`` GPUs: explicit values are kept; otherwise tensor parallelism takes the largest
    supported size (1, 2, 4, 8, 16: attention heads divide by these) that fits the GPUs of one
    pipeline stage, so a model whose needs were estimated shards over the whole machine."""
    pipeline = int(engine_args.get("pipeline_parallel_size") or 1)
    explicit = engine_args.get("tensor_parallel_size")
    if explicit is not None:
        tensor = int(explicit)
    else:
        per_stage = max(gpus // pipeline, 1)
        tensor = max(size for size in TENSOR_PARALLEL_SIZES if size <= per_stage)
    out = {"tensor_parallel_size": tensor}
    if pipeline > 1:
        out["pipeline_parallel_size"] = pipeline
    return out


def _hub_token(organization_id: int) -> str:
    """The organization's Hugging Face token in clear ("" when it has none): it travels only in
    the authenticated answer to its agent's register/heartbeat."""
    encrypted = (
        HubToken.objects.filter(organization_id=organization_id)
        .values_list("token_encrypted", flat=True)
        .first()
    )
    return crypto.decrypt(encrypted) if encrypted else ""


def data_plane_sealed(provider_kind: str) -> bool:
    """Whether the engines of this kind of provider sit behind the agent's TLS front
    (``SEALED_DATA_PLANE``: "auto" seals all but the local provider's)."""
    mode = settings.SEALED_DATA_PLANE
    return mode == "on" or (mode == "auto" and provider_kind != ProviderKind.LOCAL)


def tunnel_for(instance: Instance) -> list[str]:
    """The gateways an agent must keep a tunnel to: every one, when its machine is an
    on-premise host served through the tunnel (``OnPremHost.uses_tunnel``); else none."""
    if instance.provider.kind != ProviderKind.ONPREM or not tunneled_instance_ids([instance.id]):
        return []
    if not settings.TUNNEL_GATEWAY_URLS:
        logger.warning(
            "instance %s is on a host served through the tunnel, but "
            "INVENTIV_TUNNEL_GATEWAY_URLS is empty: no gateway can reach it",
            instance.id,
        )
    return list(settings.TUNNEL_GATEWAY_URLS)


def engine_spec_for(instance: Instance, *, tunnel: bool = False) -> EngineSpec:
    """The engine the agent must run. For vLLM: parallelism from the machine's GPUs, the model
    code's context length as ``max_model_len`` (engine arguments may override it), its
    precision and quantization; the organization's Hugging Face token if it has one."""
    model = instance.llm_model
    args = dict(model.engine_args)
    if model.engine in ("vllm", "tgi"):
        args.update(parallelism_for(gpus=machine_gpu_count(instance), engine_args=args))
    if model.max_model_len and "max_model_len" not in args:
        args["max_model_len"] = int(model.max_model_len)
    return EngineSpec(
        engine=model.engine,  # type: ignore[arg-type]
        model_id=model.model_id,
        served_model_name=model.name,
        engine_args=args,
        api_key=crypto.decrypt(instance.engine_secret_encrypted),
        dtype=model.dtype,
        quantization=model.quantization,
        hf_token=_hub_token(model.organization_id),
        # Tunneled: only the agent's tunnel reaches the engine, on loopback.
        host="127.0.0.1" if instance.provider.kind == ProviderKind.LOCAL or tunnel else "0.0.0.0",
        port=instance.engine_port,
        # Behind the agent's TLS front; a tunneled machine is reached through its tunnel.
        sealed=data_plane_sealed(instance.provider.kind) and not tunnel,
    )


def desired_for(instance: Instance) -> Desired:
    status = S(instance.status)
    if status in POWERED_DOWN:
        # Kept at zero: drain, never stop (a stopped agent forgets the credential it resumes
        # with when the machine is powered on again).
        return Desired(action=DesiredAction.DRAIN, engine=engine_spec_for(instance))
    if status in SERVE_STATUSES or status == S.DRAINING:
        tunnel = tunnel_for(instance)
        return Desired(
            action=DesiredAction.SERVE if status in SERVE_STATUSES else DesiredAction.DRAIN,
            engine=engine_spec_for(instance, tunnel=bool(tunnel)),
            tunnel=tunnel,
        )
    return Desired(action=DesiredAction.STOP)


def _version_warning(instance: Instance, agent_version: str) -> str:
    """The warning for an agent of another release ("" when there is none), logged once."""
    if not agent_version_mismatch(agent_version):
        return ""
    logger.warning(
        "instance %s: agent version %s differs from the control plane's %s; it is accepted "
        "(same protocol version), but install inventiv-agent %s",
        instance.id,
        agent_version,
        CONTROL_PLANE_VERSION,
        CONTROL_PLANE_VERSION,
    )
    return f"agent {agent_version} differs from the control plane's {CONTROL_PLANE_VERSION}"


def agent_register(*, request: RegisterRequest) -> RegisterResponse:
    """Exchange a one-time bootstrap token for a per-instance credential. The token is
    consumed atomically: of two concurrent registrations with it, one wins."""
    instance = (
        Instance.objects.select_related("llm_model", "provider", "instance_type")
        .filter(bootstrap_token_hash=crypto.token_hash(request.bootstrap_token))
        .first()
    )
    now = timezone.now()
    if (
        instance is None
        or instance.bootstrap_used_at is not None
        or instance.bootstrap_expires_at is None
        or instance.bootstrap_expires_at < now
        or instance.status not in (S.PROVISIONING, S.BOOTING)
    ):
        raise AgentAuthError("Invalid, expired or already used bootstrap token.")
    credential = crypto.new_token("ivc_")
    fields = {
        "bootstrap_used_at": now,
        "bootstrap_token_encrypted": "",
        "credential_hash": crypto.token_hash(credential),
        "registered_at": now,
        "last_heartbeat_at": now,
        "agent_version": request.agent_version[:64],
        # Pinned (and the endpoint https) only where the engine sits behind the agent's TLS
        # front: an unsealed engine (the local provider's) speaks plain HTTP.
        "tls_fingerprint": (
            request.tls_fingerprint if data_plane_sealed(instance.provider.kind) else ""
        ),
    }
    if not instance.engine_host and request.advertise_host:
        fields["engine_host"] = instance.public_ip or request.advertise_host
    with transaction.atomic():
        claimed = Instance.objects.filter(id=instance.id, bootstrap_used_at__isnull=True).update(
            **fields
        )
        if not claimed:
            raise AgentAuthError("Invalid, expired or already used bootstrap token.")
        for key, value in fields.items():
            setattr(instance, key, value)
        if instance.status == S.PROVISIONING:
            instance_transition(
                instance=instance,
                to=S.BOOTING,
                expected=S.PROVISIONING,
                reason="agent registered before the create call returned",
            )
        warning = _version_warning(instance, request.agent_version)
        instance_transition(
            instance=instance,
            to=S.STARTING,
            expected=S.BOOTING,
            reason=f"agent registered from {request.hostname}"
            + (f"; warning: {warning}" if warning else ""),
            data={
                "gpus": [g.model_dump() for g in request.gpus],
                "agent_version": request.agent_version,
                "control_plane_version": CONTROL_PLANE_VERSION,
            },
        )
    instance.refresh_from_db(fields=["status"])  # it may have been terminated meanwhile
    return RegisterResponse(
        instance_id=str(instance.id),
        credential=credential,
        heartbeat_interval_s=settings.HEARTBEAT_INTERVAL_S,
        desired=desired_for(instance),
    )


def agent_authenticate(*, credential: str) -> Instance:
    instance = (
        Instance.objects.select_related("llm_model", "provider", "instance_type")
        .filter(credential_hash=crypto.token_hash(credential))
        .exclude(credential_hash="")
        .first()
    )
    if instance is None or not hmac.compare_digest(
        instance.credential_hash, crypto.token_hash(credential)
    ):
        raise AgentAuthError("Invalid agent credential.")
    return instance


def agent_heartbeat(*, instance: Instance, heartbeat: Heartbeat) -> HeartbeatResponse:
    """Record a heartbeat and move the instance according to what the agent reports:
    starting→ready when the engine is ready, ready→starting when it is down (not routable),
    unavailable→ready/starting when heartbeats resume, draining→terminating once drained.
    A reported ``agent_version`` other than the recorded one (an agent upgraded in place) is
    recorded, with a warning if it differs from the control plane's."""
    if heartbeat.instance_id != str(instance.id):
        raise AgentAuthError("This credential belongs to another instance.")
    now = timezone.now()
    fields: dict[str, object] = {
        "last_heartbeat_at": now,
        "agent_state": heartbeat.state.value,
        "engine_status": heartbeat.engine.model_dump(),
        "engine_metrics": heartbeat.metrics.model_dump() if heartbeat.metrics else {},
    }
    if (
        heartbeat.tls_fingerprint
        and heartbeat.tls_fingerprint != instance.tls_fingerprint
        and data_plane_sealed(instance.provider.kind)
    ):
        # A restarted agent with a new certificate: the gateways pin the new one.
        fields["tls_fingerprint"] = heartbeat.tls_fingerprint
    reported = heartbeat.agent_version[:64]
    if reported and reported != instance.agent_version:
        fields["agent_version"] = reported
        _version_warning(instance, reported)
    Instance.objects.filter(id=instance.id).update(**fields)
    for key, value in fields.items():
        setattr(instance, key, value)

    status, state = S(instance.status), heartbeat.state
    engine = heartbeat.engine
    if state == AgentState.READY and status in (S.STARTING, S.UNAVAILABLE):
        reason = (
            "engine healthy, model listed, warm-up answered"
            if status == S.STARTING
            else "heartbeats resumed, engine ready"
        )
        instance_transition(instance=instance, to=S.READY, expected=status, reason=reason)
    elif state in (AgentState.ENGINE_DOWN, AgentState.STARTING) and status in (
        S.READY,
        S.UNAVAILABLE,
    ):
        why = engine.last_error or state.value
        instance_transition(
            instance=instance,
            to=S.STARTING,
            expected=status,
            reason=f"engine not ready ({why}); restarts={engine.restarts}",
        )
    elif status == S.BOOTING and instance.registered_at is not None:
        # Woken from a power-off (scale to zero): the agent resumed with its stored credential.
        instance_transition(
            instance=instance,
            to=S.STARTING,
            expected=S.BOOTING,
            reason="machine powered on: the agent resumed",
        )
    elif state == AgentState.DRAINED and status == S.DRAINING:
        instance_finish_drain(instance=instance, reason="drained: no request in flight")
    return HeartbeatResponse(
        heartbeat_interval_s=settings.HEARTBEAT_INTERVAL_S, desired=desired_for(instance)
    )


# --- The heartbeat at fleet scale (issue 19) ---------------------------------------------------
# One web core must answer about a thousand heartbeats a second, so the common beat (nothing
# changed since the last one) costs one narrow indexed query by credential hash, the renewal of
# the instance's lease in the cache, and an UPDATE only of what changed: ``engine_metrics`` when
# they moved, ``last_heartbeat_at`` every ``heartbeat_persist_s()`` (the reconciler reads the
# lease for the few instances whose recorded beat is past the deadline). The answer comes from
# a per-process memo of the last full answer; anything the full path would act upon (a status
# changed, another state, engine status, agent version or certificate reported, the model code
# edited) takes the full path, ``agent_heartbeat``, again.
_QUICK_COLUMNS = (
    ("id", "i.id"),
    ("credential_hash", "i.credential_hash"),
    ("status", "i.status"),
    ("status_changed_at", "i.status_changed_at"),
    ("agent_state", "i.agent_state"),
    ("agent_version", "i.agent_version"),
    ("engine_status", "i.engine_status"),
    ("engine_metrics", "i.engine_metrics"),
    ("last_heartbeat_at", "i.last_heartbeat_at"),
    ("llm_model__updated_at", "m.updated_at"),
    ("provider__kind", "p.kind"),
    ("hub_token__updated_at", "h.updated_at"),
)


@functools.cache
def identify_sql() -> str:
    """One indexed look-up by credential hash (raw SQL: the ORM's compiler cost more than the
    query itself, measured 0.3 ms against 0.07 ms); one parameter, the credential's hash. Run by
    :func:`agent_identify` and by the ASGI fast path on its own connections."""
    columns = ", ".join(sql for _, sql in _QUICK_COLUMNS)
    # Only constant names here (columns above, the models' tables); the hash is a parameter.
    return (
        f"SELECT {columns} FROM {Instance._meta.db_table} i"  # noqa: S608
        f" JOIN {LlmModel._meta.db_table} m ON m.id = i.llm_model_id"
        f" JOIN {Provider._meta.db_table} p ON p.id = i.provider_id"
        f" LEFT JOIN {HubToken._meta.db_table} h ON h.organization_id = i.organization_id"
        " WHERE i.credential_hash = %s AND i.credential_hash <> ''"
    )


def _json(value: Any) -> Any:
    return json.loads(value) if isinstance(value, str | bytes) else value


# A memoised answer is recomputed at least this often anyway (a safety net: what it depends on
# is in its version, and a deployed model code's engine fields are frozen).
HEARTBEAT_MEMO_TTL_S = 300.0
_MEMO_MAX = 200_000


@dataclass(frozen=True, slots=True)
class _BeatMemo:
    # (status, status_changed_at, model code's updated_at, Hugging Face token's updated_at)
    version: tuple[Any, ...]
    reported: tuple[Any, ...]  # (state, engine status, agent version, certificate)
    reply: bytes
    until: float  # monotonic


_memo: dict[str, _BeatMemo] = {}


def _reported(heartbeat: Heartbeat) -> tuple[Any, ...]:
    return (
        heartbeat.state.value,
        heartbeat.engine.model_dump(),
        heartbeat.agent_version[:64],
        getattr(heartbeat, "tls_fingerprint", ""),
    )


# Leases are renewed in batches: one ``set_many`` (one round trip) every LEASE_FLUSH_S from a
# thread of the process, instead of one cache write per beat (measured 0.25 ms of CPU each).
LEASE_FLUSH_S = 0.5
_leases: dict[str, float] = {}
_leases_lock = threading.Lock()
_flusher_pid: int | None = None


def heartbeat_lease_renew(instance_id: str, now: float) -> None:
    """Renew the instance's heartbeat lease (``apps.instances.selectors.instance_last_beats``)
    within ``LEASE_FLUSH_S``."""
    global _flusher_pid
    with _leases_lock:
        _leases[instance_id] = now
    if _flusher_pid != os.getpid():
        _flusher_pid = os.getpid()
        threading.Thread(target=_flush_leases_forever, name="heartbeat-leases", daemon=True).start()


def heartbeat_leases_flush() -> int:
    """Write the leases renewed since the last flush; how many."""
    global _leases
    with _leases_lock:
        pending, _leases = _leases, {}
    if pending:
        cache.set_many(
            {heartbeat_lease_key(k): v for k, v in pending.items()},
            timeout=max(4 * settings.HEARTBEAT_DEADLINE_S, 120),
        )
    return len(pending)


def _flush_leases_forever() -> None:
    while True:
        time.sleep(LEASE_FLUSH_S)
        try:
            heartbeat_leases_flush()
        except Exception:  # Redis away for a moment: the database's beats still stand
            logger.exception("heartbeat leases could not be written")


def agent_identify(*, credential: str) -> dict[str, Any]:
    """The few columns of the instance this credential belongs to (one indexed query), or
    ``AgentAuthError``."""
    hashed = crypto.token_hash(credential)
    with connection.cursor() as cursor:
        cursor.execute(identify_sql(), [hashed])
        found = cursor.fetchone()
    return identify_row(found, hashed=hashed)


def identify_row(found: Sequence[Any] | None, *, hashed: str) -> dict[str, Any]:
    """The look-up's row (``None``: no such credential) as :func:`agent_identify` gives it, or
    ``AgentAuthError``."""
    if found is None:
        raise AgentAuthError("Invalid agent credential.")
    row = dict(zip((name for name, _ in _QUICK_COLUMNS), found, strict=True))
    if not hmac.compare_digest(row["credential_hash"], hashed):
        raise AgentAuthError("Invalid agent credential.")
    # As the ORM would read them (SQLite's raw rows hold text: hex ids, ISO dates, JSON).
    row["id"] = str(row["id"] if isinstance(row["id"], uuid.UUID) else uuid.UUID(str(row["id"])))
    for name in ("status_changed_at", "last_heartbeat_at"):
        value = parse_datetime(row[name]) if isinstance(row[name], str) else row[name]
        if value is not None and timezone.is_naive(value):
            value = value.replace(tzinfo=UTC)  # stored in UTC
        row[name] = value
    row["engine_status"] = _json(row["engine_status"])
    row["engine_metrics"] = _json(row["engine_metrics"])
    return row


@functools.cache
def beats_batch_update_sql() -> str:
    """PostgreSQL's UPDATE of many beats' fields at once (parameters: ids, times, metrics as
    three arrays; a NULL leaves that field as it is). Rows another transaction holds locked
    are skipped, never waited for (so the batch can be in no deadlock): the ids written come
    back, the caller keeps the others for its next batch."""
    t = Instance._meta.db_table
    # Only constant names (the table, its columns); the values are parameters.
    sql = (
        "WITH v AS (SELECT * FROM unnest(%s::uuid[], %s::timestamptz[], %s::jsonb[])"  # noqa: S608
        f" AS v(id, at, metrics)), locked AS (SELECT i.id FROM {t} i JOIN v ON v.id = i.id"
        f" ORDER BY i.id FOR UPDATE OF i SKIP LOCKED) UPDATE {t} i SET last_heartbeat_at ="
        " GREATEST(i.last_heartbeat_at, v.at), engine_metrics = COALESCE(v.metrics,"
        " i.engine_metrics) FROM v WHERE i.id = v.id AND i.id IN (SELECT id FROM locked)"
        " RETURNING i.id"
    )
    return sql


def _write_beat(instance_id: str, fields: dict[str, Any]) -> None:
    """One UPDATE of ``last_heartbeat_at`` and/or ``engine_metrics`` (raw on PostgreSQL, as
    the look-up; the ORM on the embedded mode's SQLite)."""
    if connection.vendor != "postgresql":
        Instance.objects.filter(id=instance_id).update(**fields)
        return
    sets, params = [], []
    if "last_heartbeat_at" in fields:
        sets.append("last_heartbeat_at = %s")
        params.append(fields["last_heartbeat_at"])
    if "engine_metrics" in fields:
        sets.append("engine_metrics = %s::jsonb")
        params.append(json.dumps(fields["engine_metrics"]))
    with connection.cursor() as cursor:
        cursor.execute(
            f"UPDATE {Instance._meta.db_table} SET {', '.join(sets)} WHERE id = %s",  # noqa: S608
            [*params, instance_id],
        )


def heartbeat_steady(
    *, row: dict[str, Any], heartbeat: Heartbeat
) -> tuple[bytes, dict[str, Any]] | None:
    """For a beat that changes nothing the full path acts upon (the memo's answer, given for
    the same version and the same reports): that answer and the fields to write (see
    :func:`agent_heartbeat_quick`); ``None`` when the beat must take the full path. Reads
    nothing but the memo; raises ``AgentAuthError`` for a beat of another instance."""
    instance_id = str(row["id"])
    if heartbeat.instance_id != instance_id:
        raise AgentAuthError("This credential belongs to another instance.")
    memo = _memo.get(instance_id)
    if memo is None or memo.version != _version(row) or memo.until <= time.monotonic():
        return None
    reported = _reported(heartbeat)
    if not (
        memo.reported == reported
        and row["agent_state"] == reported[0]
        and row["engine_status"] == reported[1]
        and (not reported[2] or row["agent_version"] == reported[2])
    ):
        return None
    fields: dict[str, Any] = {}
    metrics = heartbeat.metrics.model_dump() if heartbeat.metrics else {}
    if metrics != row["engine_metrics"]:
        fields["engine_metrics"] = metrics
    last = row["last_heartbeat_at"]
    now = timezone.now()
    if last is None or (now - last).total_seconds() >= heartbeat_persist_s():
        fields["last_heartbeat_at"] = now
    return memo.reply, fields


def _version(row: dict[str, Any]) -> tuple[Any, ...]:
    return (
        row["status"],
        row["status_changed_at"],
        row["llm_model__updated_at"],
        row["hub_token__updated_at"],
    )


def agent_heartbeat_quick(*, row: dict[str, Any], heartbeat: Heartbeat) -> bytes:
    """The JSON answer to a heartbeat of the instance ``row`` (:func:`agent_identify`), as
    :func:`agent_heartbeat` would give it (same checks, same transitions, same errors), at the
    cost described above. Not atomic with a concurrent transition: a status changed meanwhile
    is seen by the next beat, as with the full path."""
    wall = time.time()
    steady = heartbeat_steady(row=row, heartbeat=heartbeat)
    instance_id = str(row["id"])
    if steady is not None:
        reply, fields = steady
        if fields:
            _write_beat(instance_id, fields)
        heartbeat_lease_renew(instance_id, wall)
        return reply
    return agent_heartbeat_full(row=row, heartbeat=heartbeat, wall=wall)


def agent_heartbeat_full(*, row: dict[str, Any], heartbeat: Heartbeat, wall: float) -> bytes:
    """The full path for a beat :func:`heartbeat_steady` did not answer: :func:`agent_heartbeat`
    on the instance read whole, its answer memoised when it made no transition. ``wall`` is
    the beat's time (``time.time()``) for its lease."""
    instance_id = str(row["id"])
    version, reported = _version(row), _reported(heartbeat)
    instance = Instance.objects.select_related("llm_model", "provider", "instance_type").get(
        id=instance_id
    )
    reply = agent_heartbeat(instance=instance, heartbeat=heartbeat).model_dump_json().encode()
    heartbeat_lease_renew(instance_id, wall)
    if instance.status == row["status"] and row["provider__kind"] != ProviderKind.ONPREM:
        # No transition with these inputs: the same beat again would change nothing but its
        # metrics and time. (On-premise instances' answers follow their host's tunnel: never
        # memoised.)
        if len(_memo) >= _MEMO_MAX:
            _memo.clear()
        _memo[instance_id] = _BeatMemo(
            version, reported, reply, time.monotonic() + HEARTBEAT_MEMO_TTL_S
        )
    else:
        _memo.pop(instance_id, None)
    return reply

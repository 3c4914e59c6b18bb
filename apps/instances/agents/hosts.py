"""On-premise hosts: issuing a join command, joining, and each poll of a host agent.

Tokens: the join token is one-time and short-lived (``INVENTIV_ONPREM_JOIN_TOKEN_TTL_S``);
only its keyed hash is stored, and it is cleared when used. The host credential is likewise
stored as a hash. An instance's bootstrap token is handed to its host (encrypted at rest) only
until the host reports the instance agent running.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from datetime import timedelta
from typing import Any

from django.conf import settings
from django.db import transaction
from django.utils import timezone

from agent.host_protocol import (
    Assignment,
    AssignmentAction,
    HostJoinRequest,
    HostJoinResponse,
    HostPoll,
    HostPollResponse,
    ProcessState,
)
from agent.tunnel_probe import dial_back
from apps.instances.agents.bootstrap import render_join_command
from apps.instances.agents.versions import CONTROL_PLANE_VERSION, agent_version_mismatch
from apps.instances.choices import ProviderKind
from apps.instances.models import OnPremAssignment, OnPremHost, Provider
from inventiv import crypto
from inventiv.errors import ApplicationError

logger = logging.getLogger(__name__)
A = OnPremAssignment


class HostAuthError(ApplicationError):
    code = "invalid_agent_credentials"


@dataclass(frozen=True)
class JoinCommand:
    host: OnPremHost
    join_token: str  # shown once
    command: str
    expires_at: object


def onprem_host_issue_join(*, provider: Provider, name: str) -> JoinCommand:
    """Create (or re-arm) host ``name`` and return its one-time join command. Re-arming a
    joined host revokes its credential: the host must join again."""
    if provider.kind != ProviderKind.ONPREM:
        raise ApplicationError("Hosts can only join an on-premise provider.", param="provider")
    token = crypto.new_token("ivj_")
    expires = timezone.now() + timedelta(seconds=settings.ONPREM_JOIN_TOKEN_TTL_S)
    host, _ = OnPremHost.objects.update_or_create(
        provider=provider,
        name=name,
        defaults={
            "join_token_hash": crypto.token_hash(token),
            "join_expires_at": expires,
            "credential_hash": "",
        },
    )
    return JoinCommand(
        host=host,
        join_token=token,
        command=render_join_command(join_token=token),
        expires_at=expires,
    )


def _gpu_summary(gpus: list[dict[str, Any]]) -> tuple[str, int]:
    if not gpus:
        return "", 0
    return str(gpus[0]["name"])[:64], min(int(g["memory_mib"]) for g in gpus) // 1024


def onprem_host_join(*, request: HostJoinRequest) -> HostJoinResponse:
    """Exchange a valid, unexpired, unused join token for a host credential. The token is
    consumed by compare-and-set, so two concurrent joins with one token get one credential."""
    now = timezone.now()
    host = OnPremHost.objects.filter(join_token_hash=crypto.token_hash(request.join_token)).first()
    if host is None or not host.join_expires_at or host.join_expires_at < now:
        raise HostAuthError("Invalid, expired or already used join token.")
    credential = crypto.new_token("ivh_")
    gpus = [g.model_dump() for g in request.gpus]
    gpu_model, vram_per_gpu_gb = _gpu_summary(gpus)
    # One write: a reader never sees a joined host without its GPU summary.
    claimed = OnPremHost.objects.filter(id=host.id, join_token_hash=host.join_token_hash).update(
        join_token_hash="",
        join_expires_at=None,
        joined_at=now,
        last_seen_at=now,
        credential_hash=crypto.token_hash(credential),
        hostname=request.hostname[:255],
        advertise_host=request.advertise_host[:255],
        gpus=gpus,
        gpu_model=gpu_model,
        vram_per_gpu_gb=vram_per_gpu_gb,
    )
    if not claimed:
        raise HostAuthError("Invalid, expired or already used join token.")
    host.refresh_from_db()
    if request.probe_port is not None:
        # Can we open a connection to it? If not, an ``auto`` host is served through the tunnel.
        host.dialable = dial_back(host.advertise_host, request.probe_port)
        host.probed_at = timezone.now()
        host.save(update_fields=["dialable", "probed_at"])
    logger.info(
        "on-premise host %s joined with %d GPU(s)%s",
        host.name,
        len(request.gpus),
        "" if host.dialable is not False else "; it cannot be dialed: served through the tunnel",
    )
    if agent_version_mismatch(request.agent_version):
        logger.warning(
            "on-premise host %s: host agent version %s differs from the control plane's %s",
            host.name,
            request.agent_version,
            CONTROL_PLANE_VERSION,
        )
    return HostJoinResponse(
        host_id=host.id, credential=credential, poll_interval_s=settings.ONPREM_POLL_INTERVAL_S
    )


def onprem_host_authenticate(*, credential: str) -> OnPremHost:
    host = OnPremHost.objects.filter(
        credential_hash=crypto.token_hash(credential), enabled=True
    ).first()
    if host is None or not crypto.token_matches(credential, host.credential_hash):
        raise HostAuthError("Invalid host credential.")
    return host


def onprem_host_poll(*, host: OnPremHost, poll: HostPoll) -> HostPollResponse:
    """Record what the host runs and answer what it must run or stop.

    * reported running: the bootstrap token is no longer needed (cleared);
    * reported exited: recorded (the instance misses heartbeats; the orchestrator replaces it);
    * reported stopped, or stop-requested and not reported at all (never started): stopped,
      which frees its GPUs.
    """
    now = timezone.now()
    reports = {r.id: r for r in poll.assignments}
    with transaction.atomic():
        host = OnPremHost.objects.select_for_update().get(id=host.id)
        host.last_seen_at = now
        fields = ["last_seen_at"]
        if poll.gpus:
            host.gpus = [g.model_dump() for g in poll.gpus]
            host.gpu_model, host.vram_per_gpu_gb = _gpu_summary(host.gpus)
            fields += ["gpus", "gpu_model", "vram_per_gpu_gb"]
        host.save(update_fields=fields)
        live = list(host.assignments.exclude(state=A.State.STOPPED).select_for_update())
        answer: list[Assignment] = []
        for assignment in live:
            report = reports.get(assignment.id)
            if (report is not None and report.state == ProcessState.STOPPED) or (
                report is None and assignment.desired == A.Desired.STOP
            ):
                assignment.state = A.State.STOPPED
                assignment.stopped_at = now
                assignment.bootstrap_token_encrypted = ""
                assignment.save(update_fields=["state", "stopped_at", "bootstrap_token_encrypted"])
                continue
            if report is not None:
                assignment.state = (
                    A.State.RUNNING if report.state == ProcessState.RUNNING else A.State.EXITED
                )
                assignment.exit_code = report.exit_code
                if report.state == ProcessState.RUNNING:
                    assignment.bootstrap_token_encrypted = ""
                assignment.save(update_fields=["state", "exit_code", "bootstrap_token_encrypted"])
            token = (
                crypto.decrypt(assignment.bootstrap_token_encrypted)
                if assignment.desired == A.Desired.RUN and assignment.bootstrap_token_encrypted
                else None
            )
            answer.append(
                Assignment(
                    id=assignment.id,
                    instance_id=str(assignment.instance_id),
                    action=AssignmentAction(assignment.desired),
                    engine_port=assignment.engine_port,
                    gpu_indices=list(assignment.gpu_indices),
                    bootstrap_token=token,
                )
            )
        # Processes the host runs that we no longer know: tell it to stop them.
        known = {a.id for a in live}
        for report in poll.assignments:
            if report.id not in known and report.state == ProcessState.RUNNING:
                stale = A.objects.filter(id=report.id, host=host).first()
                answer.append(
                    Assignment(
                        id=report.id,
                        instance_id=str(stale.instance_id) if stale else "",
                        action=AssignmentAction.STOP,
                        engine_port=stale.engine_port if stale else 0,
                    )
                )
    return HostPollResponse(
        poll_interval_s=settings.ONPREM_POLL_INTERVAL_S,
        control_plane_url=settings.AGENT_API_URL,
        assignments=answer,
    )

"""On-premise hosts (machines an operator brings, running ``python -m agent.host``) and the
GPU assignments of instances placed on them."""

from __future__ import annotations

from collections.abc import Iterable
from uuid import UUID

from django.db import models

from apps.instances.models.instance import Instance
from apps.instances.models.supply import Provider


class Reachability(models.TextChoices):
    """How the gateways reach a host's engines (docs/providers.md, hosts behind NAT)."""

    AUTO = "auto", "Automatic"  # direct if the dial-back probe at join answered, else tunnel
    DIRECT = "direct", "Direct"  # the gateways dial advertise_host:engine_port
    TUNNEL = "tunnel", "Tunnel"  # the agents keep a tunnel open to every gateway


class OnPremHost(models.Model):
    """A machine an operator joined to an on-premise provider. Its host agent
    (``python -m agent.host``) pulls assignments and runs one instance agent per assignment."""

    provider = models.ForeignKey(Provider, on_delete=models.CASCADE, related_name="hosts")
    name = models.CharField(max_length=64)
    enabled = models.BooleanField(default=True)
    # One-time join token (hash only) and its deadline; cleared once used.
    join_token_hash = models.CharField(max_length=64, blank=True, db_index=True)
    join_expires_at = models.DateTimeField(null=True, blank=True)
    joined_at = models.DateTimeField(null=True, blank=True)
    # The host agent's credential (hash only), given once at join.
    credential_hash = models.CharField(max_length=64, blank=True, db_index=True)
    hostname = models.CharField(max_length=255, blank=True)
    # The address the gateway uses to reach engines on this host.
    advertise_host = models.CharField(max_length=255, blank=True)
    # [{"index": 0, "name": "NVIDIA L4", "memory_mib": 23034}, ...] as reported by the host.
    gpus = models.JSONField(default=list, blank=True)
    gpu_model = models.CharField(max_length=64, blank=True)
    vram_per_gpu_gb = models.PositiveIntegerField(default=0)
    last_seen_at = models.DateTimeField(null=True, blank=True)
    created_at = models.DateTimeField(auto_now_add=True)
    reachability = models.CharField(
        max_length=8, choices=Reachability.choices, default=Reachability.AUTO
    )
    # The dial-back probe at join (agent.tunnel_probe): could the control plane open a
    # connection to advertise_host? None: not probed (an agent without a probe port).
    dialable = models.BooleanField(null=True, blank=True)
    probed_at = models.DateTimeField(null=True, blank=True)

    class Meta:
        constraints = [
            models.UniqueConstraint(fields=["provider", "name"], name="onpremhost_unique_name"),
            models.CheckConstraint(
                condition=models.Q(reachability__in=Reachability.values),
                name="onpremhost_reachability_valid",
            ),
        ]

    def __str__(self) -> str:
        return f"{self.provider.name}/{self.name}"

    @property
    def gpu_count(self) -> int:
        return len(self.gpus or [])

    @property
    def uses_tunnel(self) -> bool:
        """Its engines are served through their agents' tunnels, not dialed."""
        return self.reachability == Reachability.TUNNEL or (
            self.reachability == Reachability.AUTO and self.dialable is False
        )


_TUNNELED_HOSTS = models.Q(host__reachability=Reachability.TUNNEL) | models.Q(
    host__reachability=Reachability.AUTO, host__dialable=False
)


class OnPremAssignment(models.Model):
    """One instance placed on one host: the host agent starts an instance agent for it with
    its bootstrap token, and stops it once ``desired`` is ``stop``."""

    class Desired(models.TextChoices):
        RUN = "run", "Run"  # the host must run an instance agent for it
        STOP = "stop", "Stop"  # the host must stop it; the GPUs free once it reports stopped

    class State(models.TextChoices):
        PENDING = "pending", "Pending"  # recorded; the host has not started it yet
        RUNNING = "running", "Running"  # the instance agent process runs
        EXITED = "exited", "Exited"  # the process ended on its own (the host reports its code)
        STOPPED = "stopped", "Stopped"  # stopped on request: nothing left on the host

    host = models.ForeignKey(OnPremHost, on_delete=models.PROTECT, related_name="assignments")
    instance = models.ForeignKey(
        Instance, on_delete=models.CASCADE, related_name="onprem_assignments"
    )
    gpu_indices = models.JSONField(default=list, blank=True)
    engine_port = models.PositiveIntegerField()
    # The instance's bootstrap token, encrypted; handed to the host once, then cleared.
    bootstrap_token_encrypted = models.TextField(blank=True)
    desired = models.CharField(max_length=8, choices=Desired.choices, default=Desired.RUN)
    state = models.CharField(max_length=8, choices=State.choices, default=State.PENDING)
    exit_code = models.IntegerField(null=True, blank=True)
    created_at = models.DateTimeField(auto_now_add=True)
    stopped_at = models.DateTimeField(null=True, blank=True)

    class Meta:
        ordering = ["id"]
        constraints = [
            # At most one assignment of an instance that still holds GPUs.
            models.UniqueConstraint(
                fields=["instance"],
                condition=~models.Q(state="stopped"),
                name="onpremassignment_one_live_per_instance",
            )
        ]

    def __str__(self) -> str:
        return f"{self.instance_id} on {self.host_id} ({self.desired}/{self.state})"


def tunneled_instance_ids(instance_ids: Iterable[UUID | str]) -> set[str]:
    """Of these instances, those placed on a host served through the tunnel. One query."""
    ids = list(instance_ids)
    if not ids:
        return set()
    found = (
        OnPremAssignment.objects.filter(instance_id__in=ids)
        .exclude(state=OnPremAssignment.State.STOPPED)
        .filter(_TUNNELED_HOSTS)
        .values_list("instance_id", flat=True)
    )
    return {str(i) for i in found}

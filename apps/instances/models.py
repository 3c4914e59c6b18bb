from __future__ import annotations

import uuid
from decimal import Decimal

from django.db import models

from apps.accounts.models import Organization
from apps.instances.choices import InstanceStatus, ProviderKind
from apps.models.models import LlmModel


class Provider(models.Model):
    """A source of machines, connected by an operator. Credentials are encrypted at rest."""

    name = models.CharField(max_length=64, unique=True)
    kind = models.CharField(max_length=16, choices=ProviderKind.choices)
    enabled = models.BooleanField(default=True)
    # Non-secret settings (region, zones, project id, image, subnet...), per kind.
    config = models.JSONField(default=dict, blank=True)
    credentials_encrypted = models.TextField(blank=True, default="")
    created_at = models.DateTimeField(auto_now_add=True)

    class Meta:
        constraints = [
            models.CheckConstraint(
                condition=models.Q(kind__in=ProviderKind.values), name="provider_kind_valid"
            )
        ]

    def __str__(self) -> str:
        return self.name


class InstanceType(models.Model):
    """A machine type a provider sells (e.g. Scaleway ``L4-1-24G``: 1×L4, 24 GB)."""

    provider = models.ForeignKey(Provider, on_delete=models.CASCADE, related_name="instance_types")
    code = models.CharField(max_length=64)
    gpu_model = models.CharField(max_length=64, blank=True)
    gpu_count = models.PositiveSmallIntegerField(default=0)
    vram_per_gpu_gb = models.PositiveIntegerField(default=0)
    vcpus = models.PositiveIntegerField(default=0)
    ram_gb = models.PositiveIntegerField(default=0)
    hourly_price = models.DecimalField(max_digits=10, decimal_places=4, default=Decimal("0"))
    currency = models.CharField(max_length=3, default="EUR")
    # {"zone": "available" | "scarce" | "shortage"}, refreshed by the catalog sync.
    availability = models.JSONField(default=dict, blank=True)
    active = models.BooleanField(default=True)
    synced_at = models.DateTimeField(null=True, blank=True)

    class Meta:
        constraints = [
            models.UniqueConstraint(fields=["provider", "code"], name="instancetype_unique")
        ]

    def __str__(self) -> str:
        return f"{self.provider.name}/{self.code}"


class Instance(models.Model):
    """One machine serving one model code. Its status changes only through
    ``apps.instances.services.instance_transition`` (compare-and-set + history)."""

    id = models.UUIDField(primary_key=True, default=uuid.uuid4, editable=False)
    organization = models.ForeignKey(
        Organization, on_delete=models.PROTECT, related_name="instances"
    )
    llm_model = models.ForeignKey(LlmModel, on_delete=models.PROTECT, related_name="instances")
    provider = models.ForeignKey(Provider, on_delete=models.PROTECT, related_name="instances")
    instance_type = models.ForeignKey(
        InstanceType, null=True, blank=True, on_delete=models.PROTECT, related_name="instances"
    )
    zone = models.CharField(max_length=64, blank=True)
    status = models.CharField(
        max_length=24, choices=InstanceStatus.choices, default=InstanceStatus.PROVISIONING
    )
    status_reason = models.CharField(max_length=500, blank=True)
    status_changed_at = models.DateTimeField()
    # The last failure, kept after cleanup so that "terminated" still says why.
    failure_reason = models.CharField(max_length=500, blank=True)
    # The provider's id for the machine, recorded the moment we have it.
    provider_resource_id = models.CharField(max_length=255, blank=True)
    provider_data = models.JSONField(default=dict, blank=True)
    public_ip = models.CharField(max_length=64, blank=True)
    engine_host = models.CharField(max_length=255, blank=True)
    engine_port = models.PositiveIntegerField(default=8000)
    engine_secret_encrypted = models.TextField()
    bootstrap_token_hash = models.CharField(max_length=64, blank=True, db_index=True)
    # Kept (encrypted) until used, so that a re-sent provision command boots with the same token.
    bootstrap_token_encrypted = models.TextField(blank=True)
    bootstrap_expires_at = models.DateTimeField(null=True, blank=True)
    bootstrap_used_at = models.DateTimeField(null=True, blank=True)
    credential_hash = models.CharField(max_length=64, blank=True, db_index=True)
    registered_at = models.DateTimeField(null=True, blank=True)
    last_heartbeat_at = models.DateTimeField(null=True, blank=True)
    agent_state = models.CharField(max_length=24, blank=True)
    engine_status = models.JSONField(default=dict, blank=True)
    engine_metrics = models.JSONField(default=dict, blank=True)
    ready_at = models.DateTimeField(null=True, blank=True)
    # Until then, missed heartbeats are expected (an operator rebooted or powered the machine
    # off) and do not make the instance unavailable or get it replaced.
    maintenance_until = models.DateTimeField(null=True, blank=True)
    terminated_at = models.DateTimeField(null=True, blank=True)
    # How many times a provision command was sent; bounds re-sends by the reconciler.
    provision_attempts = models.PositiveSmallIntegerField(default=0)
    # When the last command (provision/terminate) for this instance was sent; the reconciler
    # re-sends one that seems lost after a while.
    command_sent_at = models.DateTimeField(null=True, blank=True)
    hourly_price = models.DecimalField(max_digits=10, decimal_places=4, default=Decimal("0"))
    replaces = models.ForeignKey(
        "self", null=True, blank=True, on_delete=models.SET_NULL, related_name="replaced_by"
    )
    archived = models.BooleanField(default=False)
    created_at = models.DateTimeField(auto_now_add=True)

    class Meta:
        constraints = [
            models.CheckConstraint(
                condition=models.Q(status__in=InstanceStatus.values), name="instance_status_valid"
            )
        ]
        indexes = [
            models.Index(fields=["status"], name="instance_status_idx"),
            models.Index(fields=["llm_model", "status"], name="instance_model_status_idx"),
        ]

    def __str__(self) -> str:
        return f"{self.id} ({self.status})"

    @property
    def endpoint(self) -> str:
        """Base URL of the engine's OpenAI API, as the gateway reaches it."""
        host = self.engine_host or self.public_ip
        return f"http://{host}:{self.engine_port}" if host else ""


class InstanceEvent(models.Model):
    """Append-only history of an instance: every status change with its reason."""

    instance = models.ForeignKey(Instance, on_delete=models.CASCADE, related_name="events")
    from_status = models.CharField(max_length=24, blank=True)
    to_status = models.CharField(max_length=24)
    reason = models.CharField(max_length=500)
    data = models.JSONField(default=dict, blank=True)
    created_at = models.DateTimeField(auto_now_add=True, db_index=True)

    class Meta:
        ordering = ["id"]

    def __str__(self) -> str:
        return f"{self.instance_id}: {self.from_status} -> {self.to_status}"


class ProvisionAttempt(models.Model):
    """One offer tried for one instance, and how it went: why provisioning picked what it did,
    or failed."""

    class Outcome(models.TextChoices):
        SUCCEEDED = "succeeded", "Succeeded"
        FAILED = "failed", "Failed"

    instance = models.ForeignKey(Instance, on_delete=models.CASCADE, related_name="attempts")
    provider = models.ForeignKey(Provider, on_delete=models.PROTECT, related_name="+")
    instance_type = models.ForeignKey(
        InstanceType, null=True, blank=True, on_delete=models.PROTECT, related_name="+"
    )
    instance_type_code = models.CharField(max_length=64, blank=True)
    zone = models.CharField(max_length=64, blank=True)
    outcome = models.CharField(max_length=16, choices=Outcome.choices)
    error_code = models.CharField(max_length=64, blank=True)
    message = models.CharField(max_length=1000, blank=True)
    created_at = models.DateTimeField(auto_now_add=True)

    class Meta:
        ordering = ["id"]

    def __str__(self) -> str:
        return f"{self.instance_id} {self.instance_type_code}@{self.zone}: {self.outcome}"


class OrchestratorLock(models.Model):
    """A named lease for singleton work (the reconciler), taken by compare-and-set so that it
    works the same on PostgreSQL and SQLite and never blocks: a second taker just skips."""

    name = models.CharField(max_length=64, primary_key=True)
    holder = models.CharField(max_length=128, blank=True)
    expires_at = models.DateTimeField(null=True, blank=True)
    last_run_at = models.DateTimeField(null=True, blank=True)
    last_summary = models.JSONField(default=dict, blank=True)

    def __str__(self) -> str:
        return self.name


# --- Providers: on-premise hosts and the sweeper's record (owned by the providers work) -------


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

    class Meta:
        constraints = [
            models.UniqueConstraint(fields=["provider", "name"], name="onpremhost_unique_name")
        ]

    def __str__(self) -> str:
        return f"{self.provider.name}/{self.name}"

    @property
    def gpu_count(self) -> int:
        return len(self.gpus or [])


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


class SweepRecord(models.Model):
    """What the sweeper saw and did about one tagged resource at a provider."""

    class Action(models.TextChoices):
        REMOVED = "removed", "Removed"  # orphan: deleted at the provider
        KEPT = "kept", "Kept"  # belongs to a live instance (possibly to be adopted)
        DEFERRED = "deferred", "Deferred"  # orphan, but still inside the grace period
        FAILED = "failed", "Failed"  # removal failed; retried next sweep

    provider = models.ForeignKey(Provider, on_delete=models.CASCADE, related_name="sweeps")
    resource_kind = models.CharField(max_length=32, default="machine")
    resource_id = models.CharField(max_length=255)
    instance_id = models.CharField(max_length=64, blank=True)
    action = models.CharField(max_length=16, choices=Action.choices)
    reason = models.CharField(max_length=500)
    created_at = models.DateTimeField(auto_now_add=True, db_index=True)

    class Meta:
        ordering = ["id"]
        indexes = [models.Index(fields=["provider", "resource_id"], name="sweep_resource_idx")]

    def __str__(self) -> str:
        return f"{self.provider_id} {self.resource_kind} {self.resource_id}: {self.action}"

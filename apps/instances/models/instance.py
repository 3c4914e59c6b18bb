"""The instance lifecycle: an instance, its status history, its provisioning attempts, and the
orchestrator's lease."""

from __future__ import annotations

import uuid
from decimal import Decimal

from django.db import models

from apps.accounts.models import Organization
from apps.instances.choices import InstanceStatus
from apps.instances.models.supply import InstanceType, Provider
from apps.models.models import LlmModel


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
    # SHA-256 of the certificate of the agent's TLS front (hex; "" for a direct, plain-HTTP
    # engine), as the agent reported it: the gateways dial https and pin exactly this.
    tls_fingerprint = models.CharField(max_length=64, blank=True)
    bootstrap_token_hash = models.CharField(max_length=64, blank=True, db_index=True)
    # Kept (encrypted) until used, so that a re-sent provision command boots with the same token.
    bootstrap_token_encrypted = models.TextField(blank=True)
    bootstrap_expires_at = models.DateTimeField(null=True, blank=True)
    bootstrap_used_at = models.DateTimeField(null=True, blank=True)
    credential_hash = models.CharField(max_length=64, blank=True, db_index=True)
    registered_at = models.DateTimeField(null=True, blank=True)
    last_heartbeat_at = models.DateTimeField(null=True, blank=True)
    agent_state = models.CharField(max_length=24, blank=True)
    # The agent package's release as the agent last reported it ("" until it registers); the
    # control plane warns when it differs from its own (``inventiv.__version__``).
    agent_version = models.CharField(max_length=64, blank=True)
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
        if ":" in host and not host.startswith("["):
            host = f"[{host}]"
        scheme = "https" if self.tls_fingerprint else "http"
        return f"{scheme}://{host}:{self.engine_port}" if host else ""


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

"""Machine supply: providers, the instance types they sell, and the sweeper's records."""

from __future__ import annotations

from decimal import Decimal

from django.db import models

from apps.instances.choices import ProviderKind


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

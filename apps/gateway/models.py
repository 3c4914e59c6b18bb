"""API keys: ``sk-inv_<lookup id>_<secret>``, owned by an organization.

Only a keyed hash of the whole key is stored (``inventiv.crypto.token_hash``); the lookup id is
public and indexed so that the gateway finds the row without scanning, then compares the hash in
constant time. The plaintext is shown once, at creation (or rotation).
"""

from __future__ import annotations

from django.conf import settings
from django.db import models

from apps.accounts.models import Organization
from apps.models.models import LlmModel


class ApiKey(models.Model):
    organization = models.ForeignKey(
        Organization, on_delete=models.PROTECT, related_name="api_keys"
    )
    name = models.CharField(max_length=100)
    # Public part of the key (16 hex characters), shown in lists to tell keys apart.
    lookup_id = models.CharField(max_length=16, unique=True)
    secret_hash = models.CharField(max_length=64)
    # Empty allow-list: every model code of the organization.
    model_codes = models.ManyToManyField(LlmModel, blank=True, related_name="api_keys")
    expires_at = models.DateTimeField(null=True, blank=True)
    revoked_at = models.DateTimeField(null=True, blank=True)
    # Per-key limits; null means unlimited.
    rpm_limit = models.PositiveIntegerField(null=True, blank=True)
    tpm_limit = models.PositiveIntegerField(null=True, blank=True)
    concurrency_limit = models.PositiveIntegerField(null=True, blank=True)
    created_by = models.ForeignKey(
        settings.AUTH_USER_MODEL, null=True, blank=True, on_delete=models.SET_NULL, related_name="+"
    )
    # The key this one replaced by rotation.
    rotated_from = models.OneToOneField(
        "self", null=True, blank=True, on_delete=models.SET_NULL, related_name="rotated_to"
    )
    created_at = models.DateTimeField(auto_now_add=True)

    class Meta:
        ordering = ["-id"]
        indexes = [models.Index(fields=["organization", "revoked_at"], name="apikey_org_idx")]

    def __str__(self) -> str:
        return f"{self.name} (sk-inv_{self.lookup_id}_…)"

    @property
    def prefix(self) -> str:
        """What lists show of the key: its public part."""
        return f"sk-inv_{self.lookup_id}_"

"""Usage: one record per gateway request, written in batches by the worker."""

from __future__ import annotations

from django.db import models

from apps.accounts.models import Organization
from apps.gateway.usage_record import FINAL_SEQ


class UsageRecord(models.Model):
    """What one request through the gateway consumed. Idempotent by ``request_id``: the flush
    task may write a batch twice (after a crash) without double counting. ``seq`` orders a
    request's versions: a stream's checkpoints (1, 2, ...; what was delivered so far) are
    superseded by its final record (``FINAL_SEQ``), never the reverse; a record whose ``seq``
    is below ``FINAL_SEQ`` is a stream whose gateway died (``gateway_interrupted``).

    Foreign keys are plain ids without database constraints: records are written in bulk from a
    buffer and must never fail because a key or model code was deleted meanwhile.
    """

    request_id = models.CharField(max_length=64, unique=True)
    organization = models.ForeignKey(
        Organization, on_delete=models.DO_NOTHING, db_constraint=False, related_name="+"
    )
    api_key_id = models.BigIntegerField(null=True, blank=True)
    model_code_id = models.BigIntegerField(null=True, blank=True, db_index=True)
    model_code = models.CharField(max_length=64)
    instance_id = models.UUIDField(null=True, blank=True)
    endpoint = models.CharField(max_length=32)
    stream = models.BooleanField(default=False)
    prompt_tokens = models.PositiveIntegerField(default=0)
    completion_tokens = models.PositiveIntegerField(default=0)
    total_tokens = models.PositiveIntegerField(default=0)
    # HTTP status returned to the client (499 when the client went away mid-stream).
    status_code = models.PositiveSmallIntegerField()
    error_code = models.CharField(max_length=64, blank=True)
    attempts = models.PositiveSmallIntegerField(default=1)
    latency_ms = models.FloatField(default=0)
    ttft_ms = models.FloatField(null=True, blank=True)
    started_at = models.DateTimeField(db_index=True)
    seq = models.PositiveIntegerField(default=FINAL_SEQ)
    created_at = models.DateTimeField(auto_now_add=True)

    class Meta:
        ordering = ["-started_at", "-id"]
        indexes = [
            models.Index(fields=["organization", "started_at"], name="usage_org_time_idx"),
        ]

    def __str__(self) -> str:
        return f"{self.request_id} {self.model_code} {self.total_tokens}"

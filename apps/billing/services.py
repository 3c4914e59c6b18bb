"""Writes for usage: the flush from the gateways' buffer to the database."""

from __future__ import annotations

import logging
from datetime import UTC, datetime
from typing import Any

import orjson
from django.conf import settings

from apps.billing.models import UsageRecord
from apps.gateway.backends import UsageBuffer, usage_buffer

logger = logging.getLogger(__name__)
_FIELDS = (
    "request_id", "organization_id", "api_key_id", "model_code_id", "model_code", "instance_id",
    "endpoint", "stream", "prompt_tokens", "completion_tokens", "status_code", "error_code",
    "attempts", "latency_ms", "ttft_ms",
)  # fmt: skip


def _record(raw: bytes) -> UsageRecord | None:
    try:
        data: dict[str, Any] = orjson.loads(raw)
        values: dict[str, Any] = {name: data.get(name) for name in _FIELDS}
        values["error_code"] = values["error_code"] or ""
        values["prompt_tokens"] = int(values["prompt_tokens"] or 0)
        values["completion_tokens"] = int(values["completion_tokens"] or 0)
        values["total_tokens"] = values["prompt_tokens"] + values["completion_tokens"]
        values["started_at"] = datetime.fromtimestamp(float(data["started_at"]), tz=UTC)
        return UsageRecord(**values)
    except (orjson.JSONDecodeError, KeyError, TypeError, ValueError):
        logger.error("dropping a malformed usage record: %r", raw[:200])
        return None


def usage_flush(
    *, batch_size: int | None = None, max_batches: int = 50, buffer: UsageBuffer | None = None
) -> int:
    """Move buffered usage records to the database, in batches; return how many were read.

    Idempotent by request id: a batch written but not acknowledged (crash in between) is written
    again on the next run and its duplicates are ignored. A lock keeps two flushes from
    acknowledging each other's records; a flush that finds it taken does nothing.
    """
    buffer = buffer or usage_buffer()
    size = batch_size or settings.USAGE_FLUSH_BATCH
    if not buffer.lock(ttl_s=60):
        return 0
    total = 0
    try:
        for _ in range(max_batches):
            raw = buffer.peek(size)
            if not raw:
                break
            records = [r for r in map(_record, raw) if r is not None]
            UsageRecord.objects.bulk_create(records, ignore_conflicts=True)
            buffer.ack(len(raw))
            total += len(raw)
            if len(raw) < size:
                break
    finally:
        buffer.unlock()
    return total

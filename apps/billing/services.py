"""Writes for usage: the flush from the gateways' buffer to the database."""

from __future__ import annotations

import logging
from datetime import UTC, datetime

from django.conf import settings

from apps.billing.models import UsageRecord
from apps.gateway.usage_buffer import UsageBuffer, usage_buffer
from apps.gateway.usage_record import UsageRecordData

logger = logging.getLogger(__name__)


def _record(raw: bytes) -> UsageRecord | None:
    try:
        data = UsageRecordData.from_json(raw)
        started_at = datetime.fromtimestamp(data.started_at, tz=UTC)
    except (KeyError, TypeError, ValueError):  # orjson.JSONDecodeError is a ValueError
        logger.error("dropping a malformed usage record: %r", raw[:200])
        return None
    return UsageRecord(
        request_id=data.request_id,
        organization_id=data.organization_id,
        api_key_id=data.api_key_id,
        model_code_id=data.model_code_id,
        model_code=data.model_code,
        instance_id=data.instance_id,
        endpoint=data.endpoint,
        stream=data.stream,
        prompt_tokens=data.prompt_tokens,
        completion_tokens=data.completion_tokens,
        total_tokens=data.prompt_tokens + data.completion_tokens,
        status_code=data.status_code,
        error_code=data.error_code,
        attempts=data.attempts,
        latency_ms=data.latency_ms,
        ttft_ms=data.ttft_ms,
        started_at=started_at,
    )


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

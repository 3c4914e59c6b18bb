"""Writes for usage: the flush from the gateways' buffer to the database."""

from __future__ import annotations

import logging
import os
import socket
import threading
from collections.abc import Iterable
from datetime import UTC, datetime
from typing import Any

from django.conf import settings
from django.db import connection, transaction
from django.db.models import Field
from django.utils import timezone

from apps.billing.models import UsageRecord
from apps.gateway.usage_buffer import UsageBuffer, usage_buffer
from apps.gateway.usage_record import UsageRecordData

logger = logging.getLogger(__name__)

_COLUMNS = [
    "request_id",
    "organization_id",
    "api_key_id",
    "model_code_id",
    "model_code",
    "instance_id",
    "endpoint",
    "stream",
    "prompt_tokens",
    "completion_tokens",
    "total_tokens",
    "status_code",
    "error_code",
    "attempts",
    "latency_ms",
    "ttft_ms",
    "started_at",
    "seq",
    "created_at",
]
_UPSERT_ROWS = 500
_FIELDS: dict[str, Field[Any, Any]] = {
    f.column: f for f in UsageRecord._meta.concrete_fields if f.column in _COLUMNS
}


def _parse(raw: bytes) -> UsageRecordData | None:
    try:
        data = UsageRecordData.from_json(raw)
        datetime.fromtimestamp(data.started_at, tz=UTC)
    except (KeyError, TypeError, ValueError, OverflowError, OSError):
        logger.error("dropping a malformed usage record: %r", raw[:200])
        return None
    return data


def _values(data: UsageRecordData, now: datetime) -> list[Any]:
    values: dict[str, Any] = {
        "request_id": data.request_id,
        "organization_id": data.organization_id,
        "api_key_id": data.api_key_id,
        "model_code_id": data.model_code_id,
        "model_code": data.model_code,
        "instance_id": data.instance_id,
        "endpoint": data.endpoint,
        "stream": data.stream,
        "prompt_tokens": data.prompt_tokens,
        "completion_tokens": data.completion_tokens,
        "total_tokens": data.prompt_tokens + data.completion_tokens,
        "status_code": data.status_code,
        "error_code": data.error_code,
        "attempts": data.attempts,
        "latency_ms": data.latency_ms,
        "ttft_ms": data.ttft_ms,
        "started_at": datetime.fromtimestamp(data.started_at, tz=UTC),
        "seq": data.seq,
        "created_at": now,
    }
    return [_FIELDS[c].get_db_prep_save(values[c], connection) for c in _COLUMNS]


def usage_records_upsert(*, records: Iterable[UsageRecordData]) -> int:
    """Write records, idempotent by request id: a request's record is inserted, or replaced by a
    version with a higher ``seq`` (a checkpoint by a later one, any by the final), never by an
    equal or lower one. Returns how many distinct requests were given. One transaction."""
    latest: dict[str, UsageRecordData] = {}
    for record in records:
        held = latest.get(record.request_id)
        if held is None or record.seq > held.seq:
            latest[record.request_id] = record
    if not latest:
        return 0
    table = UsageRecord._meta.db_table
    quoted = connection.ops.quote_name
    columns = ", ".join(quoted(c) for c in _COLUMNS)
    updates = ", ".join(
        f"{quoted(c)} = EXCLUDED.{quoted(c)}" for c in _COLUMNS if c not in ("request_id",)
    )
    row = "(" + ", ".join(["%s"] * len(_COLUMNS)) + ")"
    now = timezone.now()
    rows = [_values(r, now) for r in latest.values()]
    # Identifiers come from the model's metadata only; every value is a parameter.
    head = f"INSERT INTO {quoted(table)} ({columns}) VALUES "  # noqa: S608
    tail = (
        f" ON CONFLICT ({quoted('request_id')}) DO UPDATE SET {updates}"
        f" WHERE {quoted(table)}.{quoted('seq')} < EXCLUDED.{quoted('seq')}"
    )
    with transaction.atomic(), connection.cursor() as cursor:
        for start in range(0, len(rows), _UPSERT_ROWS):
            chunk = rows[start : start + _UPSERT_ROWS]
            cursor.execute(
                head + ", ".join([row] * len(chunk)) + tail,
                [value for values in chunk for value in values],
            )
    return len(latest)


def _consumer() -> str:
    return f"{socket.gethostname()}:{os.getpid()}:{threading.get_ident()}"


def usage_flush(
    *, batch_size: int | None = None, max_batches: int = 50, buffer: UsageBuffer | None = None
) -> int:
    """Move buffered usage records to the database, in batches; return how many were read.

    Each batch is read for this consumer, written (``usage_records_upsert``), and then exactly
    its entries are acknowledged: a flush that dies in between leaves them pending, and the
    next flush takes them over after ``USAGE_CLAIM_IDLE_S`` and writes them again (ignored as
    duplicates). Flushes may overlap: each reads other entries, and none acknowledges what it
    did not write. Then the checkpoints of dead gateways (streams cut by a crash) become their
    requests' records. Logs a warning when the backlog passes ``USAGE_BACKLOG_ALERT``.
    """
    buffer = buffer or usage_buffer()
    size = batch_size or settings.USAGE_FLUSH_BATCH
    consumer = _consumer()
    claim_idle_s = settings.USAGE_CLAIM_IDLE_S
    total = 0
    for _ in range(max_batches):
        entries = buffer.read(consumer=consumer, count=size, claim_idle_s=claim_idle_s)
        if not entries:
            break
        parsed = [r for r in (_parse(raw) for _, raw in entries) if r is not None]
        usage_records_upsert(records=parsed)
        buffer.ack([entry_id for entry_id, _ in entries])
        total += len(entries)
        if len(entries) < size:
            break
    for gateway_id, checkpoints in buffer.orphans():
        parsed = [r for r in map(_parse, checkpoints.values()) if r is not None]
        written = usage_records_upsert(records=parsed)
        buffer.drop_orphans(gateway_id, checkpoints)
        if written:
            logger.warning(
                "gateway %s died with %d streams in flight: billed from their checkpoints",
                gateway_id,
                written,
            )
        total += len(checkpoints)
    backlog = buffer.depth()
    if backlog > settings.USAGE_BACKLOG_ALERT:
        logger.warning(
            "usage backlog of %d records after a flush (over USAGE_BACKLOG_ALERT=%d): add "
            "workers or raise USAGE_FLUSH_BATCH",
            backlog,
            settings.USAGE_BACKLOG_ALERT,
        )
    return total

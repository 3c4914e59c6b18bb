"""Usage buffers: the Redis implementation and the in-process one (embedded mode) behave the
same, and the flush writes what they hold once."""

from __future__ import annotations

import asyncio

import orjson
import pytest
from django.conf import settings

from apps.billing.models import UsageRecord
from apps.billing.services import usage_flush
from apps.gateway.usage_buffer import InProcessUsageBuffer, RedisUsageBuffer
from apps.gateway.usage_record import UsageRecordData


def _buffers():  # type: ignore[no-untyped-def]
    yield pytest.param(InProcessUsageBuffer, id="in-process")
    if settings.REDIS_URL:
        yield pytest.param(RedisUsageBuffer, id="redis")


def _record(request_id: str, org_id: int, tokens: int = 3) -> bytes:
    return orjson.dumps(
        {
            "request_id": request_id, "organization_id": org_id, "api_key_id": 1,
            "model_code_id": 1, "model_code": "bot", "instance_id": None, "endpoint": "chat",
            "stream": False, "prompt_tokens": tokens, "completion_tokens": tokens,
            "status_code": 200, "error_code": "", "attempts": 1, "latency_ms": 1.0,
            "ttft_ms": None, "started_at": 1_800_000_000.0,
        }
    )  # fmt: skip


@pytest.mark.parametrize("make", list(_buffers()))
def test_the_flush_writes_buffered_records_once_by_request_id(make, owner_org):
    # Given a buffer holding a record twice (a gateway retried its push) and a malformed one
    buffer = make()
    records = [_record("req_a", owner_org.pk), _record("req_b", owner_org.pk)]

    async def push() -> None:
        await buffer.push([*records, records[0], b"not json"])
        await buffer.push([records[1]])

    asyncio.run(push())

    # When the flush runs (twice, as after a crash between write and acknowledgement)
    read = usage_flush(buffer=buffer, batch_size=2)
    usage_flush(buffer=buffer)

    # Then each request is recorded once, and the buffer is empty
    assert read == 5
    assert sorted(UsageRecord.objects.values_list("request_id", "total_tokens")) == [
        ("req_a", 6),
        ("req_b", 6),
    ]
    assert buffer.size() == 0


@pytest.mark.parametrize("make", list(_buffers()))
def test_a_flush_does_nothing_while_another_holds_the_lock(make, owner_org):
    buffer = make()
    asyncio.run(buffer.push([_record("req_c", owner_org.pk)]))
    assert buffer.lock(ttl_s=5)
    try:
        assert usage_flush(buffer=buffer) == 0
    finally:
        buffer.unlock()

    assert usage_flush(buffer=buffer) == 1


def test_the_gateways_record_has_the_wire_format_the_flush_reads():
    # Given a record as the gateway builds it
    record = UsageRecordData(
        request_id="req_d", organization_id=1, api_key_id=1, model_code_id=1, model_code="bot",
        instance_id=None, endpoint="chat", stream=False, prompt_tokens=3, completion_tokens=3,
        status_code=200, error_code="", attempts=1, latency_ms=1.0, ttft_ms=None,
        started_at=1_800_000_000.0,
    )  # fmt: skip

    # When it is serialized for the buffer
    raw = record.to_json()

    # Then it has the keys of the wire format, and reads back the same
    assert list(orjson.loads(raw)) == list(orjson.loads(_record("req_d", 1)))
    assert UsageRecordData.from_json(raw) == record

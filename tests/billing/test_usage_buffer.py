"""Usage buffers: the Redis implementation and the in-process one (embedded mode) behave the
same; the flush writes what they hold once, acknowledges exactly what it wrote, and bills the
checkpoints of a gateway that died."""

from __future__ import annotations

import asyncio
import threading
import time

import orjson
import pytest
from django.conf import settings
from django.db import connection

from apps.billing.models import UsageRecord
from apps.billing.services import usage_flush, usage_records_upsert
from apps.gateway.usage_buffer import (
    InProcessUsageBuffer,
    RedisUsageBuffer,
    UsageRecorder,
    UsageUnavailable,
)
from apps.gateway.usage_record import FINAL_SEQ, UsageRecordData


def _buffers():  # type: ignore[no-untyped-def]
    yield pytest.param(InProcessUsageBuffer, id="in-process")
    if settings.REDIS_URL:
        yield pytest.param(RedisUsageBuffer, id="redis")


def _data(request_id: str, org_id: int, tokens: int = 3, **extra) -> UsageRecordData:  # type: ignore[no-untyped-def]
    values = {
        "request_id": request_id, "organization_id": org_id, "api_key_id": 1,
        "model_code_id": 1, "model_code": "bot", "instance_id": None, "endpoint": "chat",
        "stream": False, "prompt_tokens": tokens, "completion_tokens": tokens,
        "status_code": 200, "error_code": "", "attempts": 1, "latency_ms": 1.0,
        "ttft_ms": None, "started_at": 1_800_000_000.0,
    }  # fmt: skip
    values.update(extra)
    return UsageRecordData(**values)


def _record(request_id: str, org_id: int, tokens: int = 3) -> bytes:
    return _data(request_id, org_id, tokens).to_json()


def _write(buffer, finals: list[bytes], gateway_id: str = "gw-1", **checkpoints: bytes) -> None:  # type: ignore[no-untyped-def]
    async def go() -> None:
        for i, raw in enumerate(finals):
            await buffer.write(gateway_id=gateway_id, finals={f"k{i}": raw}, checkpoints={})
        if checkpoints:
            await buffer.write(gateway_id=gateway_id, finals={}, checkpoints=checkpoints)
        await buffer.aclose()

    asyncio.run(go())


def _tokens() -> list[tuple[str, int]]:
    return sorted(UsageRecord.objects.values_list("request_id", "total_tokens"))


@pytest.mark.parametrize("make", list(_buffers()))
def test_the_flush_writes_buffered_records_once_by_request_id(make, owner_org):
    # Given a buffer holding a record twice (a gateway retried its write) and a malformed one
    buffer = make()
    records = [_record("req_a", owner_org.pk), _record("req_b", owner_org.pk)]
    _write(buffer, [*records, records[0], b"not json", records[1]])

    # When the flush runs in small batches, then again
    read = usage_flush(buffer=buffer, batch_size=2)
    usage_flush(buffer=buffer)

    # Then each request is recorded once, and the buffer is empty
    assert read == 5
    assert _tokens() == [("req_a", 6), ("req_b", 6)]
    assert buffer.depth() == 0


@pytest.mark.parametrize("make", list(_buffers()))
def test_two_overlapping_flushes_never_delete_each_others_records(make, owner_org, settings):
    # Given ten records, five of which a first flush has read and is still writing (slow)
    settings.USAGE_CLAIM_IDLE_S = 0.3
    buffer = make()
    _write(buffer, [_record(f"req_{i}", owner_org.pk, tokens=i) for i in range(10)])
    stalled = buffer.read(consumer="slow-flush", count=5, claim_idle_s=0.3)
    assert len(stalled) == 5

    # When a second flush runs meanwhile
    usage_flush(buffer=buffer)

    # Then it wrote and removed only the other five: the slow flush's are still there
    assert [r for r, _ in _tokens()] == [f"req_{i}" for i in range(5, 10)]
    assert buffer.depth() == 5

    # When the slow flush stays silent past the claim time, the next flush takes them over;
    # the slow one finally acknowledges what it read (already written: nothing lost, no error)
    time.sleep(0.4)
    usage_flush(buffer=buffer)
    buffer.ack([entry_id for entry_id, _ in stalled])

    # Then every record is written once and the buffer is empty
    assert _tokens() == [(f"req_{i}", 2 * i) for i in range(10)]
    assert buffer.depth() == 0


@pytest.mark.django_db(transaction=True)
@pytest.mark.parametrize("make", list(_buffers()))
def test_concurrent_flushes_under_load_write_every_record_exactly_once(make, owner_org):
    # Given a buffer being written to while three flushes run at once, again and again
    buffer = make()
    stop = threading.Event()

    def flushing() -> None:
        try:
            while not stop.is_set():
                usage_flush(buffer=buffer, batch_size=7)
        finally:
            connection.close()

    threads = [threading.Thread(target=flushing) for _ in range(3)]
    for thread in threads:
        thread.start()
    try:
        _write(buffer, [_record(f"req_{i:03}", owner_org.pk, tokens=1) for i in range(300)])
    finally:
        stop.set()
        for thread in threads:
            thread.join()
    usage_flush(buffer=buffer)

    # Then all 300 are in the database, once each
    assert UsageRecord.objects.count() == 300
    assert buffer.depth() == 0


def test_a_later_version_of_a_record_supersedes_an_earlier_one_never_the_reverse(owner_org):
    # Given a stream's first checkpoint
    org = owner_org.pk
    cut = {"status_code": 502, "error_code": "gateway_interrupted", "stream": True}
    usage_records_upsert(records=[_data("req_s", org, tokens=1, seq=1, **cut)])

    # When a later checkpoint, the final record, then a stale checkpoint arrive
    usage_records_upsert(records=[_data("req_s", org, tokens=4, seq=2, **cut)])
    assert _tokens() == [("req_s", 8)]
    usage_records_upsert(records=[_data("req_s", org, tokens=9, stream=True)])
    usage_records_upsert(records=[_data("req_s", org, tokens=5, seq=3, **cut)])

    # Then the final one stands
    row = UsageRecord.objects.get()
    assert (row.completion_tokens, row.status_code, row.error_code, row.seq) == (
        9,
        200,
        "",
        FINAL_SEQ,
    )


@pytest.mark.parametrize("make", list(_buffers()))
def test_a_dead_gateways_checkpoints_are_billed_and_a_live_ones_are_left(make, owner_org):
    # Given two gateways with a stream in flight each; one stops beating (it was killed)
    buffer = make()
    org = owner_org.pk
    cut = {"status_code": 502, "error_code": "gateway_interrupted", "stream": True, "seq": 3}

    async def beat(gateway_id: str, ttl_s: float) -> None:
        await buffer.heartbeat(gateway_id=gateway_id, ttl_s=ttl_s)
        await buffer.aclose()

    asyncio.run(beat("dead", 0.1))
    asyncio.run(beat("alive", 30))
    _write(buffer, [], "dead", req_dead=_data("req_dead", org, tokens=7, **cut).to_json())
    _write(buffer, [], "alive", req_live=_data("req_live", org, tokens=2, **cut).to_json())
    time.sleep(0.2)

    # When the flush runs
    usage_flush(buffer=buffer)

    # Then the dead gateway's stream is billed what it had delivered, marked interrupted
    row = UsageRecord.objects.get()
    assert (row.request_id, row.completion_tokens, row.error_code) == (
        "req_dead",
        7,
        "gateway_interrupted",
    )
    assert buffer.orphans() == []

    # and the live one's stream, once final, replaces nothing of the other
    final = _data("req_live", org, tokens=5, stream=True).to_json()

    async def finish() -> None:
        await buffer.write(gateway_id="alive", finals={"req_live": final}, checkpoints={})
        await buffer.aclose()

    asyncio.run(finish())
    usage_flush(buffer=buffer)
    assert _tokens() == [("req_dead", 14), ("req_live", 10)]


class _FlakyBuffer(InProcessUsageBuffer):
    def __init__(self) -> None:
        super().__init__()
        self.down = True

    async def write(self, **kwargs) -> None:  # type: ignore[no-untyped-def,override]
        if self.down:
            raise ConnectionError("redis is down")
        await super().write(**kwargs)


def test_the_recorder_waits_for_the_buffer_and_keeps_what_it_could_not_write(owner_org, settings):
    # Given a recorder whose buffer is down
    settings.USAGE_WRITE_TIMEOUT_S = 0.3
    buffer = _FlakyBuffer()

    async def scenario() -> tuple[bool, bool]:
        recorder = UsageRecorder(buffer, gateway_id="gw")
        runner = asyncio.ensure_future(recorder.run())
        try:
            # When a record is committed while it is down, the commit gives up in time
            try:
                await recorder.commit(_data("req_x", owner_org.pk))
                gave_up = False
            except UsageUnavailable:
                gave_up = True
            # and once it is back, the record kept meanwhile is written
            buffer.down = False
            await recorder.commit(_data("req_y", owner_org.pk))
            return gave_up, buffer.depth() == 2
        finally:
            runner.cancel()

    gave_up, both = asyncio.run(scenario())

    # Then the first commit said so, and neither record was lost
    assert gave_up and both
    assert orjson.loads(buffer.read(consumer="c", count=5, claim_idle_s=1)[0][1])["request_id"]

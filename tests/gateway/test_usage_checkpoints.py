"""A stream's checkpoints (apps.gateway.usage_buffer.AccountedSend): written ahead of what is
relayed, skipped only when they would bill what the last one did."""

from __future__ import annotations

import asyncio
import time
from types import SimpleNamespace
from typing import Any

from apps.gateway.request import Request
from apps.gateway.usage_buffer import AccountedSend, InProcessUsageBuffer, UsageRecorder
from apps.gateway.usage_record import UsageRecordData


def _record(req: Request, seq: int) -> UsageRecordData:
    return UsageRecordData(
        request_id=req.request_id, organization_id=1, api_key_id=1, model_code_id=1,
        model_code="m", instance_id=None, endpoint="chat", stream=True,
        prompt_tokens=req.prompt_tokens, completion_tokens=req.completion_tokens,
        status_code=502, error_code="gateway_interrupted", attempts=1, latency_ms=0,
        ttft_ms=None, started_at=time.time(), seq=seq,
    )  # fmt: skip


def test_the_first_checkpoint_is_written_even_when_no_token_was_counted_yet():
    # Given a stream whose deltas the token count does not see (tool calls, reasoning): its
    # counts stay (0, 0) until the usage chunk
    buffer = InProcessUsageBuffer()
    recorder = UsageRecorder(buffer, gateway_id="gw-checkpoints")
    req = Request(time.perf_counter(), "req_toolcalls", "chat")
    req.key = SimpleNamespace(id=1, organization_id=1)  # type: ignore[assignment]
    sent: list[dict[str, Any]] = []

    async def client(message: dict[str, Any]) -> None:
        sent.append(message)

    accounted = AccountedSend(client, req, recorder, _record)

    async def relay() -> list[dict[str, bytes]]:
        await accounted({"type": "http.response.start", "status": 200, "headers": []})
        seen = []
        for _ in range(3):  # When three batches of tool-call deltas are relayed
            await accounted(
                {"type": "http.response.body", "body": b"data: {}\n\n", "more_body": True}
            )
            seen.append(dict(buffer._inflight.get("gw-checkpoints", {})))
        return seen

    seen = asyncio.run(relay())

    # Then the first batch left under a checkpoint (a gateway killed now leaves a
    # gateway_interrupted record), and the next two, billing the same, wrote none
    assert [list(s) for s in seen] == [["req_toolcalls"]] * 3
    assert [UsageRecordData.from_json(s["req_toolcalls"]).seq for s in seen] == [1, 1, 1]
    assert len(sent) == 4

"""The gateway's capacity module without Redis (the embedded mode's board) and its hold queue:
the same semantics as the Redis board, one wake, a bounded queue, a deadline, disconnects."""

from __future__ import annotations

import asyncio
import time
from typing import Any

import pytest

from apps.gateway.capacity import Capacity, HeldStreamSend, InProcessLoadBoard
from apps.gateway.errors import GatewayError


def test_the_in_process_board_sums_live_gateways_and_forgets_dead_ones(settings: Any) -> None:
    settings.GATEWAY_LOAD_TTL_S = 0.2
    board = InProcessLoadBoard()
    asyncio.run(board.publish(gateway_id="a", counts={7: (3, 1)}, requested={7}))
    asyncio.run(board.publish(gateway_id="b", counts={7: (2, 4), 8: (1, 0)}, requested=set()))
    load = board.read(model_code_id=7)
    assert (load.inflight, load.held) == (5, 5) and load.last_request_at is not None
    time.sleep(0.3)
    assert board.read(model_code_id=7).inflight == 0
    assert board.read(model_code_id=7).last_request_at is not None  # idle is measured from it


def test_the_in_process_board_gives_the_wake_to_exactly_one_caller() -> None:
    board = InProcessLoadBoard()

    async def race() -> list[bool]:
        return await asyncio.gather(
            *(board.take_wake(model_code_id=1, ttl_s=30) for _ in range(50))
        )

    assert asyncio.run(race()).count(True) == 1
    board.clear_wake(model_code_id=1)
    assert asyncio.run(board.take_wake(model_code_id=1, ttl_s=30)) is True


def _capacity(settings: Any, wakes: list[int], **overrides: Any) -> Capacity:
    for name, value in overrides.items():
        setattr(settings, name, value)

    async def wake(model_code_id: int) -> None:
        wakes.append(model_code_id)

    async def progress(model_code_id: int) -> str:
        return "booting"

    capacity = Capacity("gw-test", wake, progress)
    capacity.board = InProcessLoadBoard()
    return capacity


async def _never() -> None:
    await asyncio.Event().wait()


def test_held_requests_wake_once_and_are_released_when_an_instance_is_ready(
    settings: Any,
) -> None:
    wakes: list[int] = []
    capacity = _capacity(settings, wakes, GATEWAY_HOLD_COMMENT_S=0.05)
    comments: list[bytes] = []
    ready = {"now": False}

    async def comment(line: bytes) -> None:
        comments.append(line)

    async def scenario() -> None:
        holds = [
            asyncio.ensure_future(
                capacity.hold(
                    model_code_id=3,
                    model_name="sales-bot",
                    timeout_s=10,
                    ready=lambda: ready["now"],
                    comment=comment,
                    disconnected=_never,
                )
            )
            for _ in range(5)
        ]
        await asyncio.sleep(0.3)
        assert capacity.counts() == {3: (0, 5)}
        ready["now"] = True
        await asyncio.gather(*holds)

    asyncio.run(scenario())
    assert wakes == [3]
    assert comments and comments[0] == b": waking sales-bot (booting)\n\n"
    assert capacity.counts() == {}


def test_a_full_queue_answers_429_and_a_wait_that_runs_out_503(settings: Any) -> None:
    capacity = _capacity(settings, [], GATEWAY_HOLD_QUEUE_MAX=1)

    async def scenario() -> tuple[GatewayError, GatewayError]:
        first = asyncio.ensure_future(
            capacity.hold(
                model_code_id=3,
                model_name="m",
                timeout_s=0.5,
                ready=lambda: False,
                comment=None,
                disconnected=_never,
            )
        )
        await asyncio.sleep(0.05)
        with pytest.raises(GatewayError) as full:
            await capacity.hold(
                model_code_id=3,
                model_name="m",
                timeout_s=0.5,
                ready=lambda: False,
                comment=None,
                disconnected=_never,
            )
        with pytest.raises(GatewayError) as late:
            await first
        return full.value, late.value

    full, late = asyncio.run(scenario())
    assert (full.status, full.code) == (429, "hold_queue_full")
    assert (late.status, late.code) == (503, "model_unavailable")
    assert dict(full.headers)[b"retry-after"] and dict(late.headers)[b"retry-after"]
    assert capacity.counts() == {}


def test_a_client_that_leaves_frees_its_place_at_once(settings: Any) -> None:
    capacity = _capacity(settings, [], GATEWAY_HOLD_QUEUE_MAX=1)

    async def scenario() -> None:
        left = asyncio.Event()

        async def disconnected() -> None:
            await left.wait()

        hold = asyncio.ensure_future(
            capacity.hold(
                model_code_id=3,
                model_name="m",
                timeout_s=30,
                ready=lambda: False,
                comment=None,
                disconnected=disconnected,
            )
        )
        await asyncio.sleep(0.05)
        assert capacity.counts() == {3: (0, 1)}
        left.set()
        with pytest.raises(asyncio.CancelledError):
            await hold
        assert capacity.counts() == {}

    asyncio.run(scenario())


def test_a_held_stream_turns_a_later_error_answer_into_one_sse_event() -> None:
    sent: list[dict[str, Any]] = []

    async def send(message: Any) -> None:
        sent.append(dict(message))

    async def scenario() -> None:
        held = HeldStreamSend(send)
        await held.comment(b": waking m (provisioning)\n\n")
        await held({"type": "http.response.start", "status": 503, "headers": []})
        await held({"type": "http.response.body", "body": b'{"error": {}}\n'})

    asyncio.run(scenario())
    assert sent[0]["status"] == 200
    assert (b"content-type", b"text/event-stream") in sent[0]["headers"]
    assert [m["type"] for m in sent] == [
        "http.response.start",
        "http.response.body",
        "http.response.body",
    ]
    assert sent[2]["body"] == b'data: {"error": {}}\n\n'

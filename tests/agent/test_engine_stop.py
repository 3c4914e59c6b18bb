"""Stopping an engine that ignores SIGTERM: the agent escalates to SIGKILL (issue 15).

The engine is a real child process (a ``vllm`` on PATH that ignores SIGTERM), supervised by the
agent's real ``EngineSupervisor``.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import time
from pathlib import Path

import pytest

from agent.protocol import EngineSpec
from agent.supervisor import EngineSupervisor, SupervisorTimings
from tests.agent.conftest import pid_alive
from tests.processes import free_port

STUBBORN = """#!{python}
import signal, time
signal.signal(signal.SIGTERM, signal.SIG_IGN)
while True:
    time.sleep(1)
"""


@pytest.fixture
def stubborn_vllm(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A ``vllm`` executable that ignores SIGTERM, first on PATH."""
    import sys

    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    exe = bin_dir / "vllm"
    exe.write_text(STUBBORN.format(python=sys.executable))
    exe.chmod(0o755)
    monkeypatch.setenv("PATH", f"{bin_dir}{os.pathsep}{os.environ['PATH']}")


def _spec() -> EngineSpec:
    return EngineSpec(
        engine="vllm",
        model_id="org/tiny-model",
        served_model_name="tiny",
        engine_args={},
        api_key="k",
        host="127.0.0.1",
        port=free_port(),
    )


async def _started(timings: SupervisorTimings) -> tuple[EngineSupervisor, int]:
    supervisor = EngineSupervisor(on_change=lambda: None, timings=timings)
    await supervisor.serve(_spec())
    for _ in range(200):
        pid = supervisor.status().pid
        if pid is not None:
            await asyncio.sleep(0.3)  # let the child install its handler
            return supervisor, pid
        await asyncio.sleep(0.02)
    raise AssertionError("the engine did not start")


def _cleanup(pid: int | None) -> None:
    if pid is not None:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(pid, signal.SIGKILL)


def test_stop_kills_an_engine_that_ignores_sigterm_after_the_grace_period(
    stubborn_vllm: None,
) -> None:
    async def run() -> tuple[int, float]:
        supervisor, pid = await _started(SupervisorTimings(stop_timeout_s=1.0))
        start = time.monotonic()
        await supervisor.stop()
        return pid, time.monotonic() - start

    pid, took = asyncio.run(run())
    try:
        assert not pid_alive(pid)
        assert 0.9 <= took < 4
    finally:
        _cleanup(pid)


def test_an_interrupted_stop_still_kills_the_engine(stubborn_vllm: None) -> None:
    # Given a stop in its grace period (the agent is being torn down: its task is cancelled)
    async def run() -> int:
        supervisor, pid = await _started(SupervisorTimings(stop_timeout_s=30.0))
        stopping = asyncio.ensure_future(supervisor.stop())
        await asyncio.sleep(0.3)
        stopping.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await stopping
        return pid

    pid = asyncio.run(run())
    try:
        # Then the engine does not outlive it
        deadline = time.monotonic() + 3
        while pid_alive(pid) and time.monotonic() < deadline:
            time.sleep(0.05)
        assert not pid_alive(pid)
    finally:
        _cleanup(pid)


def test_kill_now_reaches_an_engine_being_stopped(stubborn_vllm: None) -> None:
    # Given a stop in its grace period, when the exit path's last resort runs
    async def run() -> int:
        supervisor, pid = await _started(SupervisorTimings(stop_timeout_s=30.0))
        stopping = asyncio.ensure_future(supervisor.stop())
        await asyncio.sleep(0.3)
        supervisor.kill_now()
        await asyncio.wait_for(stopping, 5)
        return pid

    pid = asyncio.run(run())
    try:
        assert not pid_alive(pid)
    finally:
        _cleanup(pid)

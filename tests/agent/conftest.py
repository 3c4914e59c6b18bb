"""Fixtures for agent tests: real subprocesses (agent, mock engine) and a fake control plane.

None of these needs Django or a database.
"""

from __future__ import annotations

import contextlib
import os
import signal
import sys
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import httpx
import pytest

from tests.agent.fake_control_plane import FakeControlPlane
from tests.processes import ROOT, ManagedProcess, free_port, wait_for

ENGINE_KEY = "engine-secret-key"
BOOTSTRAP = "bootstrap-secret-token"


def pid_alive(pid: int) -> bool:
    """True if ``pid`` exists and is not a zombie."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except (FileNotFoundError, ProcessLookupError):  # gone before, or while, we read it
        return False
    return stat.rsplit(")", 1)[1].split()[0] != "Z"


def mock_spec(port: int, **engine_args: Any) -> dict[str, Any]:
    return {
        "engine": "mock",
        "model_id": "org/tiny-model",
        "served_model_name": "tiny",
        "engine_args": engine_args,
        "api_key": ENGINE_KEY,
        "host": "127.0.0.1",
        "port": port,
    }


def agent_env(**extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("INVENTIV_")}
    env["PYTHONUNBUFFERED"] = "1"
    env["PYTHONPATH"] = str(ROOT)
    env.update(extra)
    return env


class MockEngine:
    def __init__(self, proc: ManagedProcess, port: int) -> None:
        self.proc = proc
        self.port = port
        self.url = f"http://127.0.0.1:{port}"
        self.client = httpx.Client(
            base_url=self.url, headers={"Authorization": f"Bearer {ENGINE_KEY}"}, timeout=10
        )

    def metric(self, name: str) -> float:
        """Sum of the samples of ``name`` in /metrics."""
        total = 0.0
        for line in self.client.get("/metrics").text.splitlines():
            if line.startswith(name + "{") or line.startswith(name + " "):
                total += float(line.rsplit(" ", 1)[1])
        return total


def start_mock_engine(tmp_path: Path, *args: str) -> MockEngine:
    port = free_port()
    proc = ManagedProcess(
        f"mock-{port}",
        [
            sys.executable,
            "-m",
            "agent.mock_engine",
            "--port",
            str(port),
            "--served-model-name",
            "tiny",
            "--model-id",
            "org/tiny-model",
            *args,
        ],
        env=agent_env(MOCK_ENGINE_API_KEY=ENGINE_KEY),
        log_dir=tmp_path,
    )
    engine = MockEngine(proc, port)

    def listening() -> bool:
        assert proc.alive(), proc.log()
        return httpx.get(engine.url + "/metrics", timeout=1).status_code == 200

    wait_for(listening, timeout=20, message="mock engine to listen")
    return engine


@pytest.fixture
def mock_engine_factory(tmp_path: Path) -> Iterator[Any]:
    engines: list[MockEngine] = []

    def factory(*args: str) -> MockEngine:
        engine = start_mock_engine(tmp_path, *args)
        engines.append(engine)
        return engine

    yield factory
    for engine in engines:
        engine.client.close()
        engine.proc.stop()


class AgentRun:
    """One agent subprocess plus what the test learned about its engine."""

    def __init__(self, proc: ManagedProcess, cp: FakeControlPlane) -> None:
        self.proc = proc
        self.cp = cp
        self.engine_pids: set[int] = set()

    def wait_state(self, state: str, *, after: int = 0, timeout: float = 30.0) -> tuple[int, Any]:
        try:
            i, beat = self.cp.wait_heartbeat(
                lambda b: b["state"] == state, after=after, timeout=timeout, message=state
            )
        except AssertionError as exc:
            raise AssertionError(f"{exc}\n--- agent log ---\n{self.proc.log()}") from None
        if beat["engine"]["pid"]:
            self.engine_pids.add(beat["engine"]["pid"])
        return i, beat

    def wait_exit(self, timeout: float = 30.0) -> int:
        wait_for(lambda: not self.proc.alive(), timeout=timeout, message="agent to exit")
        code = self.proc.proc.returncode
        assert code is not None
        return code


@pytest.fixture
def control_plane() -> Iterator[FakeControlPlane]:
    cp = FakeControlPlane(bootstrap_token=BOOTSTRAP, desired=mock_spec_desired(free_port()))
    cp.start()
    yield cp
    cp.close()


def mock_spec_desired(port: int, **engine_args: Any) -> dict[str, Any]:
    return {"action": "serve", "engine": mock_spec(port, **engine_args)}


@pytest.fixture
def start_agent(tmp_path: Path, control_plane: FakeControlPlane) -> Iterator[Any]:
    runs: list[AgentRun] = []

    def start(
        *,
        token: str | None = BOOTSTRAP,
        with_url_flag: bool = True,
        args: Sequence[str] = (),
        **env: str,
    ) -> AgentRun:
        url_flag = ["--control-plane", control_plane.url] if with_url_flag else []
        if token is not None:
            env["INVENTIV_BOOTSTRAP_TOKEN"] = token
        proc = ManagedProcess(
            f"agent-{len(runs)}",
            [sys.executable, "-m", "agent", *url_flag, "--log-level", "debug", *args],
            env=agent_env(**env),
            log_dir=tmp_path,
        )
        run = AgentRun(proc, control_plane)
        runs.append(run)
        return run

    yield start
    for run in runs:
        if run.proc.alive():
            run.proc.kill(signal.SIGKILL)
        for pid in run.engine_pids:  # never leak an engine, even from a failed test
            with contextlib.suppress(ProcessLookupError):
                os.killpg(pid, signal.SIGKILL)
        run.proc.stop()

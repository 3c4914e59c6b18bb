"""Real subprocesses for end-to-end tests: the web server, Celery workers, agents.

Each process runs in its own session (process group) and is killed with its children when the
test ends; its output goes to a log file that is printed when a wait fails.
"""

from __future__ import annotations

import contextlib
import os
import random
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import httpx

ROOT = Path(__file__).resolve().parent.parent
PYTHON = sys.executable


# Below Linux's ephemeral range (32768-60999) and apart from the local provider's engine ports
# (20000-32000): a port picked here cannot be taken by an outgoing connection before it binds.
TEST_PORT_RANGE = (10000, 20000)


def free_port() -> int:
    for _ in range(500):
        port = random.randrange(*TEST_PORT_RANGE)
        with socket.socket() as sock:
            try:
                sock.bind(("127.0.0.1", port))
            except OSError:
                continue
            return port
    raise RuntimeError("no free port in the test range")


def wait_for(
    predicate: Callable[[], Any],
    *,
    timeout: float = 20.0,
    interval: float = 0.05,
    message: str = "condition",
) -> Any:
    """Poll ``predicate`` until it returns a truthy value; fail with ``message`` on timeout."""
    deadline = time.monotonic() + timeout
    last_exc: Exception | None = None
    while time.monotonic() < deadline:
        try:
            value = predicate()
            if value:
                return value
        except Exception as exc:  # keep polling; report the last error on timeout
            last_exc = exc
        time.sleep(interval)
    raise AssertionError(f"timed out after {timeout}s waiting for {message} (last: {last_exc!r})")


class ManagedProcess:
    def __init__(self, name: str, args: list[str], *, env: dict[str, str], log_dir: Path) -> None:
        self.name = name
        self.args = args
        self.log_path = log_dir / f"{name}.log"
        self._log = self.log_path.open("wb")
        self.proc = subprocess.Popen(
            args,
            cwd=ROOT,
            env=env,
            stdout=self._log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )

    @property
    def pid(self) -> int:
        return self.proc.pid

    def alive(self) -> bool:
        return self.proc.poll() is None

    def log(self) -> str:
        self._log.flush()
        return self.log_path.read_text(errors="replace")

    def kill(self, sig: int = signal.SIGKILL) -> None:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(self.proc.pid, sig)

    def stop(self, timeout: float = 10.0) -> None:
        if self.alive():
            self.kill(signal.SIGTERM)
            try:
                self.proc.wait(timeout)
            except subprocess.TimeoutExpired:
                self.kill(signal.SIGKILL)
                self.proc.wait(5)
        else:
            self.kill(signal.SIGKILL)  # children left behind by a dead leader
        self._log.close()


class ProcessGroup:
    """Starts and finally stops a set of processes for one test."""

    def __init__(self, env: dict[str, str], log_dir: Path) -> None:
        self.env = env
        self.log_dir = log_dir
        self.procs: list[ManagedProcess] = []

    def start(self, name: str, args: list[str], **extra_env: str) -> ManagedProcess:
        env = {**self.env, **extra_env}
        proc = ManagedProcess(name, args, env=env, log_dir=self.log_dir)
        self.procs.append(proc)
        return proc

    def web(self, name: str = "web", **extra_env: str) -> tuple[ManagedProcess, str]:
        port = free_port()
        url = f"http://127.0.0.1:{port}"
        proc = self.start(
            name,
            [
                PYTHON,
                "-m",
                "uvicorn",
                "inventiv.asgi:application",
                "--host",
                "127.0.0.1",
                "--port",
                str(port),
                "--lifespan",
                "off",
                "--log-level",
                "warning",
            ],
            INVENTIV_PUBLIC_URL=url,
            **extra_env,
        )
        self.wait_http(proc, url + "/healthz")
        return proc, url

    def worker(
        self, name: str = "worker", *, concurrency: int = 4, **extra_env: str
    ) -> ManagedProcess:
        proc = self.start(
            name,
            [
                PYTHON,
                "-m",
                "celery",
                "-A",
                "inventiv",
                "worker",
                "-P",
                "threads",
                "-c",
                str(concurrency),
                "--without-heartbeat",
                "--without-mingle",
                "--without-gossip",
                "-l",
                "INFO",
                "-n",
                f"{name}-{os.getpid()}@%h",
            ],
            **extra_env,
        )
        wait_for(
            lambda: "ready." in proc.log() or not proc.alive(),
            timeout=30,
            message=f"{name} to start",
        )
        assert proc.alive(), proc.log()
        return proc

    def wait_http(self, proc: ManagedProcess, url: str, timeout: float = 30.0) -> None:
        def up() -> bool:
            if not proc.alive():
                raise AssertionError(f"{proc.name} died:\n{proc.log()}")
            return httpx.get(url, timeout=1).status_code < 500

        wait_for(up, timeout=timeout, message=f"{url}")

    def stop_all(self) -> None:
        for proc in reversed(self.procs):
            proc.stop()


def embedded_env(state_dir: Path) -> dict[str, str]:
    """The environment of an embedded platform (no DATABASE_URL/REDIS_URL) in ``state_dir``,
    migrated and ready to start."""
    env = {
        k: v
        for k, v in os.environ.items()
        if k not in ("DATABASE_URL", "REDIS_URL", "SECRET_KEY", "INVENTIV_TEST_DB_NAME")
    }
    env["INVENTIV_STATE_DIR"] = str(state_dir)
    subprocess.run([PYTHON, "manage.py", "migrate", "-v0"], cwd=ROOT, env=env, check=True)
    return env

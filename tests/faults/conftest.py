"""Fault fixtures: a private Redis with persistence that a test may kill and restart, and the
gateway fixtures (real engines, real gateway processes, the official SDK)."""

from __future__ import annotations

import shutil
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
import redis
import yaml

from tests.gateway.conftest import model_code, new_key, start_engine, start_gateway
from tests.processes import ROOT, free_port, wait_for

__all__ = [
    "PrivateRedis",
    "model_code",
    "new_key",
    "private_redis",
    "start_engine",
    "start_gateway",
]


def compose_redis_args() -> list[str]:
    """The flags compose.yaml runs redis-server with (persistence, above all)."""
    compose = yaml.safe_load((ROOT / "compose.yaml").read_text())
    command: list[str] = compose["services"]["redis"]["command"]
    assert command[0] == "redis-server"
    return command[1:]


class PrivateRedis:
    """A redis-server of our own, configured as compose's (so a test proves what production
    does), on its own port and directory."""

    def __init__(self, directory: Path) -> None:
        self.dir = directory
        self.port = free_port()
        self.url = f"redis://127.0.0.1:{self.port}/0"
        self.proc: subprocess.Popen[bytes] | None = None
        self.restarts = 0

    def start(self) -> None:
        exe = shutil.which("redis-server")
        assert exe, "redis-server is needed for fault tests"
        self.proc = subprocess.Popen(
            [exe, *compose_redis_args(), "--port", str(self.port), "--bind", "127.0.0.1",
             "--dir", str(self.dir), "--protected-mode", "no", "--loglevel", "warning"],
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True,
        )  # fmt: skip
        client = redis.Redis.from_url(self.url, socket_timeout=1)
        wait_for(client.ping, timeout=10, message="the private redis")
        client.close()

    def kill(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(5)

    def restart(self, down_s: float = 0.5) -> None:
        """SIGKILL (the harshest stop: no final save), stay down, start on the same files."""
        self.kill()
        time.sleep(down_s)
        self.start()
        self.restarts += 1


@pytest.fixture
def private_redis(tmp_path: Path) -> Iterator[PrivateRedis]:
    directory = tmp_path / "redis"
    directory.mkdir()
    server = PrivateRedis(directory)
    server.start()
    try:
        yield server
    finally:
        server.kill()

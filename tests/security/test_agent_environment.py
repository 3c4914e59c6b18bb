"""Agents started by the local provider and by the on-premise host agent, and the engines they
start, never inherit the starter's secrets: read from /proc/<pid>/environ of the real
processes."""

from __future__ import annotations

import contextlib
import os
import signal
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest
from django.test import override_settings

from agent.environment import agent_environment
from agent.host import HostAgent
from apps.instances.choices import ProviderKind
from apps.instances.models import Provider
from apps.instances.providers.base import MachineSpec
from apps.instances.providers.local import LocalAdapter
from tests.agent.conftest import BOOTSTRAP, mock_spec_desired
from tests.agent.fake_control_plane import FakeControlPlane
from tests.processes import free_port

# What a control plane (or a host) typically has in its environment, and must keep to itself.
SECRETS = {
    "SECRET_KEY": "django-secret-value",
    "INVENTIV_ENCRYPTION_KEYS": "fernet-key-value",
    "GATEWAY_METRICS_TOKEN": "metrics-token-value",
    "DATABASE_URL": "postgres://u:database-password@db/x",
    "REDIS_URL": "redis://:redis-password@redis/0",
    "AWS_ACCESS_KEY_ID": "AKIAEXAMPLE",
    "AWS_SECRET_ACCESS_KEY": "aws-secret-value",
    "SCW_SECRET_KEY": "scw-secret-value",
    "INVENTIV_JOIN_TOKEN": "join-token-value",
    "SOME_OTHER_TOKEN": "unlisted-value",
}


def environ_of(pid: int) -> dict[str, str]:
    raw = Path(f"/proc/{pid}/environ").read_bytes()
    return dict(item.split("=", 1) for item in raw.decode().split("\0") if "=" in item)


def assert_no_secret(env: dict[str, str], who: str) -> None:
    leaked = sorted(set(env) & set(SECRETS))
    assert not leaked, f"{who} inherited {leaked}"
    values = "\0".join(env.values())
    assert not [v for v in SECRETS.values() if v in values], f"{who} got a secret's value"


@pytest.fixture
def secrets_in_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    for name, value in SECRETS.items():
        monkeypatch.setenv(name, value)
    monkeypatch.setenv("LC_ALL", "C.UTF-8")
    monkeypatch.setenv("HF_HOME", "/tmp/hf-cache")


@pytest.fixture
def control_plane() -> Iterator[FakeControlPlane]:
    cp = FakeControlPlane(bootstrap_token=BOOTSTRAP, desired=mock_spec_desired(free_port()))
    cp.start()
    yield cp
    cp.close()


def engine_pid(cp: FakeControlPlane) -> int:
    _, beat = cp.wait_heartbeat(
        lambda b: b["state"] == "ready" and bool(b["engine"]["pid"]),
        timeout=40,
        message="the engine to be ready",
    )
    return int(beat["engine"]["pid"])


def test_the_allow_list_keeps_basics_and_drops_everything_else() -> None:
    env = agent_environment(
        {**SECRETS, "PATH": "/bin", "HOME": "/h", "LANG": "C", "LC_ALL": "C", "HF_HOME": "/m"},
        {"INVENTIV_BOOTSTRAP_TOKEN": "t"},
    )
    assert env == {
        "PATH": "/bin",
        "HOME": "/h",
        "LANG": "C",
        "LC_ALL": "C",
        "HF_HOME": "/m",
        "INVENTIV_BOOTSTRAP_TOKEN": "t",
    }


@pytest.mark.django_db
def test_local_agents_and_engines_get_an_allow_listed_environment(
    secrets_in_environment: None, control_plane: FakeControlPlane, tmp_path: Path
) -> None:
    instance_id = str(uuid.uuid4())
    adapter = LocalAdapter(Provider.objects.create(name="local", kind=ProviderKind.LOCAL))
    with override_settings(STATE_DIR=tmp_path):
        machine = adapter.create_machine(
            MachineSpec(
                instance_id=instance_id,
                instance_type="local",
                zone="local",
                control_plane_url=control_plane.url,
                bootstrap_token=BOOTSTRAP,
                engine_port=free_port(),
            )
        )
        try:
            engine = engine_pid(control_plane)
            agent = int(machine.resource_id.removeprefix("local-"))
            for pid, who in [(agent, "the local agent"), (engine, "its engine")]:
                env = environ_of(pid)
                assert_no_secret(env, who)
                assert env["INVENTIV_INSTANCE_TAG"] == instance_id  # still found by its tag
                assert env["PATH"] == os.environ["PATH"]
                assert env["LC_ALL"] == "C.UTF-8"
                assert env["HF_HOME"] == "/tmp/hf-cache"
            assert environ_of(agent)["INVENTIV_BOOTSTRAP_TOKEN"] == BOOTSTRAP
            assert "INVENTIV_BOOTSTRAP_TOKEN" not in environ_of(engine)
        finally:
            adapter.terminate_machine(machine)


def test_host_agents_start_instance_agents_with_an_allow_listed_environment(
    secrets_in_environment: None, control_plane: FakeControlPlane, tmp_path: Path
) -> None:
    host = HostAgent(
        control_plane=control_plane.url,
        join_token=SECRETS["INVENTIV_JOIN_TOKEN"],
        state_file=tmp_path / "host.json",
        advertise_host="127.0.0.1",
        gpus=[],
    )
    host._start(7, BOOTSTRAP, [0, 1], control_plane.url)
    agent = host.children[7].pid
    try:
        engine = engine_pid(control_plane)
        for pid, who in [(agent, "the instance agent"), (engine, "its engine")]:
            env = environ_of(pid)
            assert_no_secret(env, who)
            assert env["CUDA_VISIBLE_DEVICES"] == "0,1"
            assert env["INVENTIV_CONTROL_PLANE_URL"] == control_plane.url
            assert env["HF_HOME"] == "/tmp/hf-cache"
        assert environ_of(agent)["INVENTIV_BOOTSTRAP_TOKEN"] == BOOTSTRAP
    finally:
        host.stop_all()
        host.client.close()
        with contextlib.suppress(ProcessLookupError):
            os.killpg(agent, signal.SIGKILL)

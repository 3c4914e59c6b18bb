"""The agent's state directory: a restarted agent resumes with its stored credential instead of
spending its one-time bootstrap token again. Real agent and mock-engine subprocesses against the
fake control plane (whose bootstrap token is one-time)."""

from __future__ import annotations

import json
import signal
import stat
from pathlib import Path
from typing import Any

import pytest

from tests.agent.conftest import BOOTSTRAP, AgentRun
from tests.agent.fake_control_plane import FakeControlPlane
from tests.agent.test_agent_lifecycle import (
    assert_engine_gone,
    assert_no_secrets_logged,
    engine_client,
)
from tests.processes import wait_for

STALE = "cred-stale-secret"


def write_credential(state_dir: Path, *, credential: str, control_plane: str) -> Path:
    state_dir.mkdir(mode=0o700, exist_ok=True)
    path = state_dir / "credential.json"
    path.write_text(
        json.dumps(
            {"instance_id": "inst-1", "credential": credential, "control_plane": control_plane}
        )
    )
    path.chmod(0o600)
    return path


def test_it_resumes_with_its_stored_credential_after_being_killed(
    control_plane: FakeControlPlane, start_agent: Any, tmp_path: Path
) -> None:
    # Given an agent with a state directory that registered and serves
    state_dir = tmp_path / "state"
    args = ["--state-dir", str(state_dir)]
    first = start_agent(args=args)
    _, ready = first.wait_state("ready")

    # Then its credential is in a 0600 file in a 0700 directory, and nothing else is there
    stored = state_dir / "credential.json"
    assert stat.S_IMODE(state_dir.stat().st_mode) == 0o700
    assert stat.S_IMODE(stored.stat().st_mode) == 0o600
    assert json.loads(stored.read_text()) == {
        "instance_id": "inst-1",
        "credential": control_plane.credential,
        "control_plane": control_plane.url,
    }
    # And its front's key, 0600 in a 0700 directory (the same certificate after a restart)
    tls_dir = state_dir / "tls"
    assert sorted(state_dir.iterdir()) == [stored, tls_dir]
    assert stat.S_IMODE(tls_dir.stat().st_mode) == 0o700
    assert stat.S_IMODE((tls_dir / "key.pem").stat().st_mode) == 0o600
    fingerprint = control_plane.registrations[0]["tls_fingerprint"]
    assert len(fingerprint) == 64 and ready["tls_fingerprint"] == fingerprint

    # When the agent is SIGKILLed (its engine dies with it)
    first.proc.proc.send_signal(signal.SIGKILL)
    assert first.wait_exit() == -signal.SIGKILL
    assert_engine_gone(ready["engine"]["pid"])
    after = len(control_plane.heartbeats)

    # And it is started again with the same arguments (the bootstrap token is spent)
    second = start_agent(args=args)

    # Then it does not register again: it heartbeats with the stored credential, starts the
    # engine from the desired state in the answer and is READY again
    _, first_beat = control_plane.wait_heartbeat(lambda b: True, after=after)
    assert first_beat["state"] == "starting" and first_beat["engine"]["pid"] is None
    _, again = second.wait_state("ready", after=after)
    assert again["instance_id"] == "inst-1" and again["tls_fingerprint"] == fingerprint
    assert again["engine"]["pid"] != ready["engine"]["pid"]
    assert len(control_plane.registrations) == 1
    assert "resuming as instance inst-1" in second.proc.log()
    with engine_client(control_plane) as engine:
        r = engine.post(
            "/v1/chat/completions", json={"messages": [{"role": "user", "content": "x"}]}
        )
        assert r.status_code == 200

    # When it is stopped by SIGTERM (as on a reboot), the file stays for the next start
    second.proc.proc.send_signal(signal.SIGTERM)
    assert second.wait_exit() == 0
    assert stored.exists()
    for run in (first, second):
        assert_no_secrets_logged(run)


def test_it_resumes_once_the_control_plane_answers(
    control_plane: FakeControlPlane, start_agent: Any, tmp_path: Path
) -> None:
    # Given a stored credential and a control plane that is down
    write_credential(
        tmp_path / "state", credential=control_plane.credential, control_plane=control_plane.url
    )
    control_plane.bootstrap_used = True
    control_plane.heartbeat_status = 503
    run = start_agent(INVENTIV_AGENT_STATE_DIR=str(tmp_path / "state"))
    wait_for(lambda: "heartbeat failed" in run.proc.log(), message="a failed heartbeat")
    assert run.proc.alive()

    # When it is back, the agent resumes
    control_plane.heartbeat_status = None
    run.wait_state("ready")
    assert control_plane.registrations == []


@pytest.mark.parametrize(
    ("token", "token_used", "exit_code"),
    [(None, False, 0), (BOOTSTRAP, True, 3)],
    ids=["without-a-token", "with-a-spent-token"],
)
def test_a_refused_stored_credential_is_deleted_and_the_agent_exits(
    control_plane: FakeControlPlane,
    start_agent: Any,
    tmp_path: Path,
    token: str | None,
    token_used: bool,
    exit_code: int,
) -> None:
    # Given a stored credential the control plane no longer knows
    stored = write_credential(tmp_path / "state", credential=STALE, control_plane=control_plane.url)
    control_plane.bootstrap_used = token_used

    # When the agent starts
    run = start_agent(token=token, args=["--state-dir", str(tmp_path / "state")])

    # Then it deletes the file and exits (3 if its bootstrap token is refused too)
    assert run.wait_exit() == exit_code
    assert not stored.exists()
    assert control_plane.heartbeats == []
    assert len(control_plane.registrations) == (0 if token is None else 1)
    assert "refused the stored credential" in run.proc.log()
    assert STALE not in run.proc.log()


def test_a_refused_stored_credential_falls_back_to_an_unused_bootstrap_token(
    control_plane: FakeControlPlane, start_agent: Any, tmp_path: Path
) -> None:
    stored = write_credential(tmp_path / "state", credential=STALE, control_plane=control_plane.url)

    run = start_agent(args=["--state-dir", str(tmp_path / "state")])

    run.wait_state("ready")
    assert len(control_plane.registrations) == 1
    assert json.loads(stored.read_text())["credential"] == control_plane.credential
    assert STALE not in run.proc.log()


def test_a_credential_of_another_control_plane_is_ignored(
    control_plane: FakeControlPlane, start_agent: Any, tmp_path: Path
) -> None:
    stored = write_credential(
        tmp_path / "state", credential=STALE, control_plane="https://elsewhere.example.com"
    )

    run = start_agent(args=["--state-dir", str(tmp_path / "state")])

    run.wait_state("ready")
    assert len(control_plane.registrations) == 1
    assert json.loads(stored.read_text())["control_plane"] == control_plane.url


def registered_with_state(
    control_plane: FakeControlPlane, start_agent: Any, tmp_path: Path
) -> tuple[AgentRun, Path, int]:
    run = start_agent(INVENTIV_AGENT_STATE_DIR=str(tmp_path / "state"))
    _, ready = run.wait_state("ready")
    stored = tmp_path / "state" / "credential.json"
    assert stored.exists()
    return run, stored, int(ready["engine"]["pid"])


def test_desired_stop_deletes_the_stored_credential(
    control_plane: FakeControlPlane, start_agent: Any, tmp_path: Path
) -> None:
    run, stored, engine_pid = registered_with_state(control_plane, start_agent, tmp_path)

    control_plane.set_desired({"action": "stop"})

    assert run.wait_exit() == 0
    assert not stored.exists()
    assert control_plane.heartbeats[-1]["state"] == "stopping"
    assert_engine_gone(engine_pid)


def test_a_revoked_credential_is_deleted(
    control_plane: FakeControlPlane, start_agent: Any, tmp_path: Path
) -> None:
    run, stored, engine_pid = registered_with_state(control_plane, start_agent, tmp_path)

    control_plane.heartbeat_status = 401

    assert run.wait_exit() == 0
    assert not stored.exists()
    assert_engine_gone(engine_pid)


def test_without_a_token_or_a_stored_credential_it_exits_3(
    control_plane: FakeControlPlane, start_agent: Any, tmp_path: Path
) -> None:
    run = start_agent(token=None, args=["--state-dir", str(tmp_path / "state")])
    assert run.wait_exit() == 3
    assert "no stored credential and no bootstrap token" in run.proc.log()
    assert control_plane.registrations == []


def test_without_a_token_or_a_state_dir_it_is_a_usage_error(start_agent: Any) -> None:
    run = start_agent(token=None)
    assert run.wait_exit() == 2
    assert "--bootstrap-token" in run.proc.log()

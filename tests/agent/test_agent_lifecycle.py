"""The agent end to end: a real agent subprocess, a real mock engine, a fake control plane."""

from __future__ import annotations

import os
import signal
import socket
from typing import Any

import httpx

from tests.agent.conftest import (
    BOOTSTRAP,
    ENGINE_KEY,
    AgentRun,
    mock_spec,
    pid_alive,
)
from tests.agent.fake_control_plane import FakeControlPlane
from tests.processes import wait_for


def engine_client(cp: FakeControlPlane) -> httpx.Client:
    port = cp.desired["engine"]["port"]
    return httpx.Client(
        base_url=f"http://127.0.0.1:{port}",
        headers={"Authorization": f"Bearer {ENGINE_KEY}"},
        timeout=10,
    )


def assert_engine_gone(pid: int) -> None:
    wait_for(lambda: not pid_alive(pid), timeout=15, message=f"engine pid {pid} to be gone")


def assert_no_secrets_logged(run: AgentRun) -> None:
    log = run.proc.log()
    for secret in (BOOTSTRAP, run.cp.credential, ENGINE_KEY):
        assert secret not in log


def hanging_request(port: int) -> socket.socket:
    """Open a chat completion the mock will hang on (after ``hang_next``); close to release."""
    body = b'{"messages": [{"role": "user", "content": "wait"}]}'
    sock = socket.create_connection(("127.0.0.1", port))
    sock.sendall(
        b"POST /v1/chat/completions HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
        + f"Authorization: Bearer {ENGINE_KEY}\r\nContent-Length: {len(body)}\r\n\r\n".encode()
        + body
    )
    return sock


def test_it_registers_serves_drains_and_stops(
    control_plane: FakeControlPlane, start_agent: Any
) -> None:
    # Given an agent with a valid bootstrap token
    run = start_agent()

    # Then it registers and its engine becomes READY, with metrics
    _, ready = run.wait_state("ready")
    registration = control_plane.registrations[0]
    assert registration["bootstrap_token"] == BOOTSTRAP
    assert registration["advertise_host"] == "127.0.0.1"
    assert ready["instance_id"] == "inst-1"
    assert ready["engine"]["healthy"] and ready["engine"]["model_listed"]
    assert ready["engine"]["warmed_up"] and ready["engine"]["restarts"] == 0
    engine_pid = ready["engine"]["pid"]
    assert pid_alive(engine_pid)

    # When traffic flows, the metrics in heartbeats move
    with engine_client(control_plane) as engine:
        r = engine.post(
            "/v1/chat/completions",
            json={"messages": [{"role": "user", "content": "a b c"}], "max_tokens": 7},
        )
        assert r.status_code == 200
        control_plane.wait_heartbeat(
            lambda b: (b["metrics"] or {}).get("generation_tokens_total", 0) >= 8,
            message="generation tokens (warm-up 1 + 7)",
        )

        # When a request is in flight and the control plane asks to drain
        engine.post("/mock/control", json={"hang_next": 1}).raise_for_status()
        sock = hanging_request(control_plane.desired["engine"]["port"])
        control_plane.wait_heartbeat(
            lambda b: (b["metrics"] or {}).get("requests_running") == 1, message="one running"
        )
        control_plane.set_desired({"action": "drain"})

        # Then it reports DRAINING until the request is done, then DRAINED
        i, _ = run.wait_state("draining")
        sock.close()
        run.wait_state("drained", after=i)
        assert pid_alive(engine_pid)  # draining does not stop the engine

    # When the control plane asks to stop
    control_plane.set_desired({"action": "stop"})

    # Then the agent exits 0 after a STOPPING heartbeat and leaves no engine behind
    assert run.wait_exit() == 0
    assert control_plane.heartbeats[-1]["state"] == "stopping"
    assert_engine_gone(engine_pid)
    assert_no_secrets_logged(run)


def test_it_exits_3_on_a_bad_bootstrap_token(
    control_plane: FakeControlPlane, start_agent: Any
) -> None:
    run = start_agent(token="not-the-token")
    assert run.wait_exit() == 3
    assert "registration refused" in run.proc.log()
    assert control_plane.heartbeats == []
    assert "not-the-token" not in run.proc.log()


def test_it_retries_registration_while_the_control_plane_is_unavailable(
    control_plane: FakeControlPlane, start_agent: Any
) -> None:
    control_plane.register_failures = 1
    run = start_agent()
    run.wait_state("ready")
    assert len(control_plane.registrations) == 2


def test_it_restarts_a_killed_engine(control_plane: FakeControlPlane, start_agent: Any) -> None:
    # Given a READY engine
    run = start_agent()
    i, ready = run.wait_state("ready")
    first_pid = ready["engine"]["pid"]

    # When the engine is SIGKILLed
    os.kill(first_pid, signal.SIGKILL)

    # Then the agent reports ENGINE_DOWN, restarts it, and is READY again with restarts=1
    i, down = run.wait_state("engine_down", after=i)
    assert "SIGKILL" in (down["engine"]["last_error"] or "")
    _, again = run.wait_state("ready", after=i)
    assert again["engine"]["restarts"] == 1
    assert again["engine"]["pid"] != first_pid
    assert run.proc.alive()


def test_it_restarts_the_engine_when_the_spec_changes(
    control_plane: FakeControlPlane, start_agent: Any
) -> None:
    run = start_agent()
    i, ready = run.wait_state("ready")
    first_pid = ready["engine"]["pid"]
    spec = {**control_plane.desired["engine"], "served_model_name": "tiny-v2"}

    control_plane.set_desired({"action": "serve", "engine": spec})

    def restarted(beat: dict[str, Any]) -> bool:
        return beat["state"] == "ready" and beat["engine"]["pid"] not in (None, first_pid)

    _, beat = control_plane.wait_heartbeat(restarted, after=i, message="ready on a new engine")
    run.engine_pids.add(beat["engine"]["pid"])
    assert_engine_gone(first_pid)
    with engine_client(control_plane) as engine:
        assert [m["id"] for m in engine.get("/v1/models").json()["data"]] == ["tiny-v2"]


def test_it_stops_the_engine_on_sigterm(control_plane: FakeControlPlane, start_agent: Any) -> None:
    run = start_agent()
    _, ready = run.wait_state("ready")

    run.proc.proc.send_signal(signal.SIGTERM)

    assert run.wait_exit() == 0
    assert control_plane.heartbeats[-1]["state"] == "stopping"
    assert_engine_gone(ready["engine"]["pid"])


def test_it_takes_the_engine_down_when_sigkilled(
    control_plane: FakeControlPlane, start_agent: Any
) -> None:
    run = start_agent()
    _, ready = run.wait_state("ready")

    run.proc.proc.send_signal(signal.SIGKILL)

    assert run.wait_exit() == -signal.SIGKILL
    assert_engine_gone(ready["engine"]["pid"])


def test_it_stops_when_the_control_plane_revokes_it(
    control_plane: FakeControlPlane, start_agent: Any
) -> None:
    run = start_agent()
    _, ready = run.wait_state("ready")

    control_plane.heartbeat_status = 401

    assert run.wait_exit() == 0
    assert_engine_gone(ready["engine"]["pid"])


def test_it_keeps_serving_while_the_control_plane_is_down(
    control_plane: FakeControlPlane, start_agent: Any
) -> None:
    run = start_agent()
    i, ready = run.wait_state("ready")
    control_plane.heartbeat_status = 503
    wait_for(lambda: "heartbeat failed" in run.proc.log(), message="a failed heartbeat")

    control_plane.heartbeat_status = None

    _, beat = run.wait_state("ready", after=i + 1)
    assert beat["engine"]["pid"] == ready["engine"]["pid"]
    assert run.proc.alive()


def test_it_exits_after_the_control_plane_is_gone_as_long_as_it_was_told(
    control_plane: FakeControlPlane, start_agent: Any
) -> None:
    # An agent told to (the local provider's, so that the one `make demo` keeps does not run
    # forever): a short outage is served through, a long one stops the engine and exits 0
    run = start_agent(INVENTIV_AGENT_EXIT_AFTER_OFFLINE_S="1.5")
    i, ready = run.wait_state("ready")
    control_plane.heartbeat_status = 503
    wait_for(lambda: "heartbeat failed" in run.proc.log(), message="a failed heartbeat")
    control_plane.heartbeat_status = None
    i, _ = run.wait_state("ready", after=i + 1)
    assert run.proc.alive()

    control_plane.heartbeat_status = 503

    assert run.wait_exit(timeout=20) == 0
    assert "no control plane for 2s; stopping the engine" in run.proc.log()
    assert_engine_gone(ready["engine"]["pid"])


def test_it_reports_a_missing_vllm_as_engine_down(
    control_plane: FakeControlPlane, start_agent: Any
) -> None:
    spec = {**mock_spec(control_plane.desired["engine"]["port"]), "engine": "vllm"}
    control_plane.set_desired({"action": "serve", "engine": spec})
    run = start_agent(PATH="/nonexistent")

    _, down = run.wait_state("engine_down")
    assert "vllm" in down["engine"]["last_error"]
    assert run.proc.alive()
    run.proc.proc.send_signal(signal.SIGTERM)
    assert run.wait_exit() == 0


def test_it_reports_invalid_engine_args_as_engine_down(
    control_plane: FakeControlPlane, start_agent: Any
) -> None:
    spec = mock_spec(control_plane.desired["engine"]["port"], rm_rf=True)
    control_plane.set_desired({"action": "serve", "engine": spec})
    run = start_agent()

    _, down = run.wait_state("engine_down")
    assert "engine_args.rm_rf" in down["engine"]["last_error"]


def test_it_reads_its_configuration_from_the_environment(
    control_plane: FakeControlPlane, start_agent: Any
) -> None:
    run = start_agent(
        with_url_flag=False,
        INVENTIV_CONTROL_PLANE_URL=control_plane.url,
        INVENTIV_ADVERTISE_HOST="10.1.2.3",
    )
    run.wait_state("ready")
    assert control_plane.registrations[0]["advertise_host"] == "10.1.2.3"
    assert control_plane.registrations[0]["agent_version"]


def test_it_refuses_to_start_without_a_control_plane(start_agent: Any) -> None:
    run = start_agent(with_url_flag=False)
    assert run.wait_exit() == 2
    assert "--control-plane" in run.proc.log()

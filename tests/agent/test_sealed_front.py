"""The sealed data plane on the machine: a real agent runs the mock engine on loopback behind
its TLS front, and only the front's pinned certificate, the engine secret and the inference
paths get through."""

from __future__ import annotations

import hashlib
import socket
import ssl
import time
from pathlib import Path
from typing import Any

import httpx
import orjson
import pytest

from agent.tls_identity import load_or_create
from tests.agent.conftest import ENGINE_KEY, AgentRun, mock_spec
from tests.agent.fake_control_plane import FakeControlPlane
from tests.processes import free_port


def _sealed_desired(port: int, **engine_args: Any) -> dict[str, Any]:
    spec = mock_spec(port, **engine_args)
    spec["sealed"] = True
    spec["host"] = "0.0.0.0"  # as on a cloud machine: the front takes the public address
    return {"action": "serve", "engine": spec}


def _peer_fingerprint(port: int) -> str:
    context = ssl.create_default_context()
    context.check_hostname = False
    context.verify_mode = ssl.CERT_NONE
    with (
        socket.create_connection(("127.0.0.1", port), timeout=5) as raw,
        context.wrap_socket(raw) as tls,
    ):
        der = tls.getpeercert(binary_form=True)
    assert der is not None
    return hashlib.sha256(der).hexdigest()


def _client(port: int, key: str | None = ENGINE_KEY) -> httpx.Client:
    headers = {"Authorization": f"Bearer {key}"} if key is not None else {}
    # The certificate is self-signed: these tests pin it by fingerprint (above), as the gateway.
    return httpx.Client(
        base_url=f"https://127.0.0.1:{port}", headers=headers, verify=False, timeout=10
    )


def _cmdline(pid: int) -> list[str]:
    return Path(f"/proc/{pid}/cmdline").read_bytes().decode().split("\0")


@pytest.fixture
def sealed(control_plane: FakeControlPlane, start_agent: Any) -> tuple[AgentRun, int, Any]:
    port = free_port()
    control_plane.set_desired(_sealed_desired(port, token_rate=50.0))
    run = start_agent()
    _, ready = run.wait_state("ready")
    return run, port, ready


def test_the_engine_listens_on_loopback_behind_a_front_with_the_registered_certificate(
    control_plane: FakeControlPlane, sealed: tuple[AgentRun, int, Any]
) -> None:
    _, port, ready = sealed
    # Then the agent registered the SHA-256 of the certificate its front serves
    fingerprint = control_plane.registrations[0]["tls_fingerprint"]
    assert len(fingerprint) == 64 and fingerprint == _peer_fingerprint(port)
    assert ready["tls_fingerprint"] == fingerprint
    # And the engine was told to bind 127.0.0.1 on a port of the agent's, not the public one
    argv = _cmdline(ready["engine"]["pid"])
    assert argv[argv.index("--host") + 1] == "127.0.0.1"
    assert argv[argv.index("--port") + 1] != str(port)
    # And plain HTTP on the public port gets no answer from the engine
    with pytest.raises(httpx.HTTPError):
        httpx.get(f"http://127.0.0.1:{port}/health", timeout=3)


def test_chat_streams_and_embeddings_pass_the_front(sealed: tuple[AgentRun, int, Any]) -> None:
    _, port, _ = sealed
    with _client(port) as client:
        r = client.post(
            "/v1/chat/completions",
            json={"messages": [{"role": "user", "content": "a b"}], "max_tokens": 3},
        )
        assert r.status_code == 200 and r.json()["usage"]["completion_tokens"] == 3
        e = client.post("/v1/embeddings", json={"input": ["x", "y"]})
        assert e.status_code == 200 and len(e.json()["data"]) == 2
        assert client.get("/v1/models").json()["data"][0]["id"] == "tiny"
        assert client.get("/health").status_code == 200
        # A stream at 50 tokens/s arrives event by event, not buffered to the end
        arrivals: list[float] = []
        body = {"messages": [{"role": "user", "content": "a"}], "max_tokens": 10, "stream": True}
        with client.stream("POST", "/v1/chat/completions", json=body) as s:
            assert s.headers["content-type"].startswith("text/event-stream")
            for line in s.iter_lines():
                if line.startswith("data: {"):
                    arrivals.append(time.monotonic())
        assert len(arrivals) == 11  # the role chunk and 10 tokens
        assert arrivals[-1] - arrivals[1] > 0.1  # spread over the generation (~0.18 s)


def test_a_wrong_or_missing_secret_is_refused_in_the_envelope(
    sealed: tuple[AgentRun, int, Any],
) -> None:
    _, port, _ = sealed
    for key in ("not-the-secret", None):
        with _client(port, key) as client:
            for method, path in (("POST", "/v1/chat/completions"), ("GET", "/health")):
                r = client.request(method, path, json={"messages": []})
                assert r.status_code == 401
                assert r.json()["error"]["code"] == "invalid_api_key"


def test_metrics_and_every_other_path_are_refused_while_heartbeats_keep_their_metrics(
    control_plane: FakeControlPlane, sealed: tuple[AgentRun, int, Any]
) -> None:
    _, port, _ = sealed
    with _client(port) as client:
        for method, path in (
            ("GET", "/metrics"),
            ("POST", "/mock/control"),
            ("GET", "/mock/last_request"),
            ("GET", "/v1/chat/completions"),
            ("POST", "/v1/chat/completions/../../metrics"),
        ):
            r = client.request(method, path, content=b'{"crash": true}')
            assert r.status_code == 404, (method, path)
            assert r.json()["error"]["code"] == "not_found"
        assert client.get("/health").status_code == 200  # the engine did not crash
        r = client.post(
            "/v1/completions", json={"prompt": "one two", "max_tokens": 5}
        )  # counted by the engine
        assert r.status_code == 200
    # The agent still scrapes the engine's metrics on loopback for its heartbeats
    control_plane.wait_heartbeat(
        lambda b: (b["metrics"] or {}).get("generation_tokens_total", 0) >= 6,
        message="generation tokens (warm-up 1 + 5) in heartbeats",
    )


def test_a_client_that_leaves_a_stream_stops_the_generation(
    control_plane: FakeControlPlane, sealed: tuple[AgentRun, int, Any]
) -> None:
    _, port, _ = sealed
    body = {"messages": [{"role": "user", "content": "a"}], "max_tokens": 500, "stream": True}
    with _client(port) as client, client.stream("POST", "/v1/chat/completions", json=body) as s:
        for line in s.iter_lines():
            if line.startswith("data: {"):
                break
    # The engine saw the client go: its running request ends long before 500 tokens (10 s)
    control_plane.wait_heartbeat(
        lambda b: (
            (b["metrics"] or {}).get("requests_running", 1) == 0
            and (b["metrics"] or {}).get("generation_tokens_total", 0) < 100
        ),
        timeout=5,
        message="the abandoned stream to stop",
    )


def test_the_identity_is_kept_in_the_state_directory(tmp_path: Path) -> None:
    first = load_or_create(tmp_path)
    again = load_or_create(tmp_path)
    assert first.fingerprint == again.fingerprint and not first.temporary
    assert (tmp_path / "tls" / "key.pem").stat().st_mode & 0o077 == 0
    temporary = load_or_create(None)
    assert temporary.temporary and temporary.fingerprint != first.fingerprint
    temporary.discard()
    assert not temporary.cert_path.exists()
    assert orjson.dumps(first.fingerprint)  # plain hex text


def test_a_restarted_engine_is_served_again_on_its_new_loopback_port(
    control_plane: FakeControlPlane, sealed: tuple[AgentRun, int, Any]
) -> None:
    run, port, ready = sealed
    old_pid = ready["engine"]["pid"]
    argv = _cmdline(old_pid)
    old_port = argv[argv.index("--port") + 1]
    # Given the engine crashes (told so on its loopback port: the front would refuse the path)
    with pytest.raises(httpx.HTTPError):
        httpx.post(
            f"http://127.0.0.1:{old_port}/mock/control",
            json={"crash": True},
            headers={"Authorization": f"Bearer {ENGINE_KEY}"},
            timeout=5,
        )
    # Then the agent restarts it on a new loopback port and is ready again
    _, again = control_plane.wait_heartbeat(
        lambda b: b["state"] == "ready" and b["engine"]["pid"] not in (None, old_pid),
        timeout=30,
        message="the restarted engine to be ready",
    )
    new_pid = again["engine"]["pid"]
    assert again["engine"]["restarts"] == 1
    argv = _cmdline(new_pid)
    assert argv[argv.index("--host") + 1] == "127.0.0.1"
    run.engine_pids.add(new_pid)
    # And the same front, with the same certificate, reaches the new engine
    assert _peer_fingerprint(port) == control_plane.registrations[0]["tls_fingerprint"]
    with _client(port) as client:
        r = client.post("/v1/completions", json={"prompt": "a", "max_tokens": 2})
        assert r.status_code == 200 and r.json()["usage"]["completion_tokens"] == 2

"""One version for the platform and its agents: the real agent reports the package's version to
the real web process, and a protocol version the control plane cannot speak is refused, with a
clear error, on every agent endpoint (register, heartbeat, host join, host poll)."""

from __future__ import annotations

import json
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import pytest
from django.test import Client
from rest_framework.test import APIClient

import agent
import inventiv
from agent.host_protocol import HOST_PROTOCOL_VERSION
from agent.protocol import PROTOCOL_VERSION
from apps.instances.agents.api.wire import UnsupportedProtocol
from apps.instances.agents.hosts import onprem_host_issue_join
from apps.instances.choices import InstanceStatus as S
from apps.instances.models import Instance, OnPremHost, Provider
from apps.models.models import LlmModel
from tests.instances.factories import make_instance
from tests.processes import PYTHON, ProcessGroup, free_port, wait_for

CALLS = "register", "heartbeat", "host join", "host poll"


def test_the_platform_and_the_agent_have_one_version() -> None:
    assert inventiv.__version__ == agent.__version__
    assert agent.__version__.count(".") == 2  # MAJOR.MINOR.PATCH (docs/releasing.md)


def test_the_real_agent_reports_the_package_version_in_registration_and_heartbeats(
    processes: ProcessGroup, mock_model: LlmModel, api: APIClient
) -> None:
    # given the real web process and an instance waiting for its agent
    _, url = processes.web(INVENTIV_HEARTBEAT_INTERVAL_S="0.2")
    instance, token = make_instance(mock_model, S.BOOTING, engine_port=free_port())
    # when the real agent starts with the instance's bootstrap token
    run = processes.start(
        "agent",
        [PYTHON, "-m", "agent", "--control-plane", url, "--log-level", "debug"],
        INVENTIV_BOOTSTRAP_TOKEN=token,
    )
    # then its registration records the package's version
    registered = wait_for(
        lambda: Instance.objects.filter(id=instance.id, registered_at__isnull=False).first(),
        timeout=30,
        message=f"the agent to register\n{run.log()}",
    )
    assert registered.agent_version == agent.__version__ == inventiv.__version__
    (event,) = registered.events.filter(to_status=S.STARTING)
    assert event.data["agent_version"] == agent.__version__
    # and so do its heartbeats: with the recorded version blanked, the next one restores it
    Instance.objects.filter(id=instance.id).update(agent_version="")
    wait_for(
        lambda: Instance.objects.get(id=instance.id).agent_version == agent.__version__,
        timeout=15,
        message=f"a heartbeat carrying the version\n{run.log()}",
    )
    # and the REST API shows it, without a mismatch
    body = api.get(f"/api/v1/instances/{instance.id}/").json()
    assert (body["agent_version"], body["agent_version_mismatch"]) == (agent.__version__, False)
    assert run.alive(), run.log()


@pytest.fixture
def onprem(db: Any) -> Provider:
    return Provider.objects.create(name="lab", kind="onprem", config={})


@pytest.fixture
def calls(client: Client, mock_model: LlmModel, onprem: Provider) -> dict[str, Any]:
    """For each agent endpoint: its path, a valid body, its bearer credential, and a check that
    the refused call changed nothing."""
    # an instance waiting for registration
    waiting, token = make_instance(mock_model, S.BOOTING)
    # a registered instance with its credential
    serving, serving_token = make_instance(mock_model, S.BOOTING)
    credential = client.post(
        "/internal/agent/v1/register",
        {"bootstrap_token": serving_token, "agent_version": agent.__version__, "hostname": "h"},
        content_type="application/json",
    ).json()["credential"]
    beat_before = Instance.objects.get(id=serving.id).last_heartbeat_at
    # a host not joined yet, and a joined one with its credential
    unjoined = onprem_host_issue_join(provider=onprem, name="box-1")
    joined = onprem_host_issue_join(provider=onprem, name="box-2")
    host_credential = client.post(
        "/internal/agent/v1/hosts/join",
        {"join_token": joined.join_token, "hostname": "box-2", "advertise_host": "10.0.0.2"},
        content_type="application/json",
    ).json()["credential"]
    OnPremHost.objects.filter(id=joined.host.id).update(last_seen_at=None)

    def unchanged_register() -> bool:
        i = Instance.objects.get(id=waiting.id)
        return i.bootstrap_used_at is None and i.status == S.BOOTING and i.agent_version == ""

    def unchanged_heartbeat() -> bool:
        i = Instance.objects.get(id=serving.id)
        return i.last_heartbeat_at == beat_before and i.status == S.STARTING

    def unchanged_join() -> bool:
        return OnPremHost.objects.get(id=unjoined.host.id).joined_at is None

    def unchanged_poll() -> bool:
        return OnPremHost.objects.get(id=joined.host.id).last_seen_at is None

    return {
        "register": (
            "/internal/agent/v1/register",
            {"bootstrap_token": token, "agent_version": agent.__version__, "hostname": "h"},
            None,
            unchanged_register,
        ),
        "heartbeat": (
            "/internal/agent/v1/heartbeat",
            {"instance_id": str(serving.id), "state": "ready", "agent_version": "9.0.0"},
            credential,
            unchanged_heartbeat,
        ),
        "host join": (
            "/internal/agent/v1/hosts/join",
            {"join_token": unjoined.join_token, "hostname": "b", "advertise_host": "10.0.0.1"},
            None,
            unchanged_join,
        ),
        "host poll": ("/internal/agent/v1/hosts/poll", {}, host_credential, unchanged_poll),
    }


def _post(client: Client, path: str, body: dict[str, Any], credential: str | None) -> Any:
    headers = {"HTTP_AUTHORIZATION": f"Bearer {credential}"} if credential else {}
    return client.post(path, body, content_type="application/json", **headers)


@pytest.mark.parametrize("call", CALLS)
def test_the_current_protocol_version_is_accepted_on_every_agent_endpoint(
    client: Client, calls: dict[str, Any], call: str
) -> None:
    path, body, credential, _ = calls[call]
    version = HOST_PROTOCOL_VERSION if call.startswith("host") else PROTOCOL_VERSION
    response = _post(client, path, {**body, "protocol_version": version}, credential)
    assert response.status_code == 200, response.json()


@pytest.mark.parametrize("protocol_version", [2, 0, "1", True, None])
@pytest.mark.parametrize("call", CALLS)
def test_an_unsupported_protocol_version_is_refused_clearly_on_every_agent_endpoint(
    client: Client, calls: dict[str, Any], call: str, protocol_version: object
) -> None:
    # given a message from an agent speaking another protocol version
    path, body, credential, unchanged = calls[call]
    # when it reaches the control plane
    response = _post(client, path, {**body, "protocol_version": protocol_version}, credential)
    # then it is refused with the registered code, naming both versions and the remedy
    assert response.status_code == 400
    error = response.json()["error"]
    assert (error["code"], error["type"], error["param"]) == (
        "unsupported_protocol",
        "invalid_request_error",
        "protocol_version",
    )
    assert error["message"].startswith(
        f"Unsupported protocol version {protocol_version!r}; this control plane speaks version 1."
    )
    assert f"inventiv-agent {agent.__version__}" in error["message"]
    # and nothing was recorded: no token spent, no heartbeat, no join, no poll
    assert unchanged()


@pytest.mark.parametrize("call", CALLS)
def test_a_newer_protocol_is_refused_as_such_even_when_its_shape_differs(
    client: Client, calls: dict[str, Any], call: str
) -> None:
    # given a version-2 message that lacks every field version 1 requires
    path, _, credential, unchanged = calls[call]
    response = _post(client, path, {"protocol_version": 2, "something": "new"}, credential)
    # then the answer is about the protocol, not a missing field
    assert response.status_code == 400
    assert response.json()["error"]["code"] == "unsupported_protocol"
    assert unchanged()


class _Refusing(BaseHTTPRequestHandler):
    """A control plane of another protocol version: every call answers what ours would."""

    def do_POST(self) -> None:
        self.rfile.read(int(self.headers.get("Content-Length") or 0))
        body = json.dumps(UnsupportedProtocol(got=HOST_PROTOCOL_VERSION, speaks=2).body())
        self.send_response(400)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body.encode())

    def log_message(self, format: str, *args: Any) -> None:
        pass


def test_a_host_agent_refused_for_its_protocol_says_why_and_exits(
    processes: ProcessGroup, tmp_path: Any
) -> None:
    # given a control plane that speaks another protocol version
    server = ThreadingHTTPServer(("127.0.0.1", free_port()), _Refusing)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        # when the real host agent joins it
        run = processes.start(
            "host-agent",
            [
                PYTHON,
                "-m",
                "agent.host",
                "--control-plane",
                f"http://127.0.0.1:{server.server_address[1]}",
                "--state-file",
                str(tmp_path / "host.json"),
                "--advertise-host",
                "127.0.0.1",
                "--gpus-json",
                "[]",
            ],
            INVENTIV_JOIN_TOKEN="ivj_token",
        )
        wait_for(lambda: not run.alive(), timeout=30, message=f"the host agent exits\n{run.log()}")
    finally:
        server.shutdown()
        server.server_close()
    # then it exits with "refused" and its log says why, in the control plane's words
    assert run.proc.returncode == 3, run.log()
    refusal = "join refused (HTTP 400 unsupported_protocol: Unsupported protocol version 1"
    assert refusal in run.log()
    assert not (tmp_path / "host.json").exists()

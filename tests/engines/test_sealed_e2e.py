"""The sealed data plane end to end: web (agent API and the gateway at /v1), worker, beat and a
real agent whose mock engine listens on loopback behind the agent's TLS front. Chat, a stream
and embeddings pass through the real gateway, which pins the certificate the agent registered;
a wrong or missing secret, a certificate other than the pinned one, and /metrics are refused."""

from __future__ import annotations

import contextlib
import http.server
import os
import signal
import threading
import time
from collections.abc import Iterator
from typing import Any

import httpx
import pytest
from openai import OpenAI

from agent.tls_identity import load_or_create
from apps.gateway.services import api_key_create
from apps.instances.choices import InstanceStatus as S
from apps.instances.models import Instance, Provider
from apps.instances.providers.local import _tagged_pids
from apps.models.models import LlmModel
from inventiv import crypto
from tests.instances.conftest import FAST, Platform, wait_status
from tests.processes import ProcessGroup, wait_for

pytestmark = pytest.mark.slow


@pytest.fixture
def sealed_platform(processes: ProcessGroup, settings: Any) -> Iterator[Platform]:
    processes.env["INVENTIV_SEALED_DATA_PLANE"] = "on"  # the local provider's engines too
    processes.env["GATEWAY_ROUTING_REFRESH_S"] = "0.3"
    processes.env["GATEWAY_MAX_ATTEMPTS"] = "1"
    settings.SEALED_DATA_PLANE = "on"
    settings.HEARTBEAT_INTERVAL_S = float(FAST["INVENTIV_HEARTBEAT_INTERVAL_S"])
    yield Platform(processes, settings)
    for instance_id, pids in _tagged_pids().items():
        if Instance.objects.filter(id=instance_id).exists():
            for pid in pids:
                with contextlib.suppress(ProcessLookupError):
                    os.kill(pid, signal.SIGKILL)


def _ready_instance(platform: Platform, model: LlmModel, api: Any) -> Instance:
    response = api.post(f"/api/v1/model-codes/{model.id}/deploy/", {"replicas": 1})
    assert response.status_code == 202, response.json()
    wait_for(lambda: model.instances.exists(), message="an instance")
    instance = model.instances.get()
    wait_status(str(instance.id), S.READY, timeout=60)
    instance.refresh_from_db()
    return instance


def test_chat_stream_and_embeddings_pass_the_sealed_front_and_impostors_are_refused(
    sealed_platform: Platform, api: Any, mock_model: LlmModel, local_provider: Provider
) -> None:
    platform = sealed_platform
    # Given a ready instance of a sealed mock model code
    instance = _ready_instance(platform, mock_model, api)
    # Then the agent registered its certificate and the gateway dials it over https
    assert len(instance.tls_fingerprint) == 64
    assert instance.endpoint.startswith("https://127.0.0.1:")
    _, key = api_key_create(organization=mock_model.organization, name="sealed")
    client = OpenAI(base_url=f"{platform.url}/v1", api_key=key, max_retries=0)

    # When a chat, a stream and embeddings go through the gateway, they are answered
    chat = client.chat.completions.create(
        model="sales-bot", messages=[{"role": "user", "content": "hello there"}]
    )
    assert chat.usage is not None and chat.usage.completion_tokens == 8
    pieces = [
        c.choices[0].delta.content or ""
        for c in client.chat.completions.create(
            model="sales-bot", messages=[{"role": "user", "content": "hi"}], stream=True
        )
        if c.choices
    ]
    assert "".join(pieces).count("tok") == 8
    embedded = client.embeddings.create(model="sales-bot", input=["a", "b", "c"])
    assert len(embedded.data) == 3

    # And straight at the instance's address: plain HTTP gets nothing, a wrong or missing
    # secret is 401 in the envelope, /metrics is 404 even with the secret
    address = instance.endpoint.removeprefix("https://")
    with pytest.raises(httpx.HTTPError):
        httpx.get(f"http://{address}/health", timeout=3)
    secret = crypto.decrypt(instance.engine_secret_encrypted)
    for headers in ({"Authorization": "Bearer wrong"}, {}):
        r = httpx.post(
            f"{instance.endpoint}/v1/chat/completions",
            json={"messages": [{"role": "user", "content": "x"}]},
            headers=headers,
            verify=False,
            timeout=5,
        )
        assert r.status_code == 401 and r.json()["error"]["code"] == "invalid_api_key"
    r = httpx.get(
        f"{instance.endpoint}/metrics",
        headers={"Authorization": f"Bearer {secret}"},
        verify=False,
        timeout=5,
    )
    assert r.status_code == 404 and r.json()["error"]["code"] == "not_found"

    # When another server answers at the instance's address with its own certificate (an
    # impostor), the gateway, pinning the registered one, refuses to talk to it: the request
    # fails and the impostor receives no request. (The pin itself is not changed here: the
    # agent re-reports its certificate at every heartbeat, which re-pins it.)
    genuine = instance.engine_port
    with _impostor() as (impostor_port, requests_seen):
        Instance.objects.filter(id=instance.id).update(engine_port=impostor_port)
        refused = _chat_status_after_refresh(platform, key, expect=502)
        assert refused == 502 and requests_seen == []
    # And at the genuine address, it serves again
    Instance.objects.filter(id=instance.id).update(engine_port=genuine)
    assert _chat_status_after_refresh(platform, key, expect=200) == 200


@contextlib.contextmanager
def _impostor() -> Iterator[tuple[int, list[str]]]:
    """An HTTPS server with a certificate of its own that answers 200 to anything."""
    other = load_or_create(None)
    seen: list[str] = []

    class Handler(http.server.BaseHTTPRequestHandler):
        def do_POST(self) -> None:
            seen.append(self.path)
            body = b'{"choices": []}'
            self.send_response(200)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, *args: Any) -> None:
            pass

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    server.socket = other.server_context().wrap_socket(server.socket, server_side=True)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield server.server_address[1], seen
    finally:
        server.shutdown()
        server.server_close()
        other.discard()


def _chat_status_after_refresh(platform: Platform, key: str, *, expect: int) -> int:
    """The gateway reloads its routing table every 0.3 s here: poll until ``expect`` (or 5 s)."""
    deadline = time.monotonic() + 5
    status = 0
    while time.monotonic() < deadline:
        r = httpx.post(
            f"{platform.url}/v1/chat/completions",
            json={"model": "sales-bot", "messages": [{"role": "user", "content": "x"}]},
            headers={"Authorization": f"Bearer {key}"},
            timeout=10,
        )
        status = r.status_code
        if status == expect:
            if status == 502:
                assert r.json()["error"]["code"] == "upstream_unreachable"
            return status
        time.sleep(0.2)
    return status

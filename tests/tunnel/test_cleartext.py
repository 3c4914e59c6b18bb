"""The agent's tunnel credential never travels in cleartext by accident: the agent refuses a
plain-HTTP gateway URL (but on loopback, or opted in), and ``check --deploy`` warns about one."""

from __future__ import annotations

import subprocess
import sys

import pytest

from agent.tunnel import ALLOW_CLEARTEXT_ENV, TunnelClient, TunnelManager
from tests.foundation.test_platform import ROOT, _production_env


def _client(url: str) -> TunnelClient:
    return TunnelClient(url, credential="ivc_secret", instance_id="i-1", engine_port=1)


@pytest.mark.parametrize("url", ["http://gateway.example.com:8002", "ws://10.0.0.7:8002"])
def test_the_agent_refuses_a_cleartext_gateway_url(url: str, monkeypatch) -> None:
    monkeypatch.delenv(ALLOW_CLEARTEXT_ENV, raising=False)
    with pytest.raises(ValueError, match="cleartext gateway URL") as refused:
        _client(url)
    assert "ivc_secret" not in str(refused.value)


@pytest.mark.parametrize(
    "url", ["https://gateway.example.com", "wss://10.0.0.7:8002", "http://127.0.0.1:8002",
            "http://localhost:8002", "http://[::1]:8002"],
)  # fmt: skip
def test_it_accepts_tls_and_loopback_gateway_urls(url: str, monkeypatch) -> None:
    monkeypatch.delenv(ALLOW_CLEARTEXT_ENV, raising=False)
    assert _client(url).url.endswith("/internal/agent/v1/tunnel")


def test_a_cleartext_url_is_dialled_only_when_opted_in(monkeypatch) -> None:
    monkeypatch.setenv(ALLOW_CLEARTEXT_ENV, "1")
    assert _client("http://10.0.0.7:8002").url == "ws://10.0.0.7:8002/internal/agent/v1/tunnel"


async def test_the_manager_skips_a_refused_url_and_keeps_the_others(monkeypatch) -> None:
    monkeypatch.delenv(ALLOW_CLEARTEXT_ENV, raising=False)
    manager = TunnelManager()
    urls = ["http://gateway.example.com:8002", "https://gateway.example.com"]
    for _ in range(2):  # each answer of the control plane lists them again
        await manager.update(urls, credential="ivc_x", instance_id="i-1", engine_port=1)
    assert list(manager.clients) == ["https://gateway.example.com"]
    assert manager.refused == {"http://gateway.example.com:8002"}
    await manager.close()


def test_check_deploy_warns_about_a_cleartext_tunnel_gateway_url() -> None:
    def check(urls: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [sys.executable, "manage.py", "check", "--deploy", "--fail-level", "WARNING"],
            cwd=ROOT,
            env=_production_env(INVENTIV_TUNNEL_GATEWAY_URLS=urls),
            capture_output=True,
            text=True,
        )

    cleartext = check("https://gw1.example.com,http://gw2.example.com:8002")
    assert cleartext.returncode != 0
    assert "inventiv.W005" in cleartext.stdout + cleartext.stderr
    assert "http://gw2.example.com:8002" in cleartext.stdout + cleartext.stderr
    tls = check("https://gw1.example.com,https://gw2.example.com")
    assert tls.returncode == 0, tls.stdout + tls.stderr

"""A host behind NAT, end to end in network namespaces (issue 12).

The host agent (and so its instance agent and the mock engine) runs in its own network
namespace, whose only link is a veth pair to the root namespace, where the web server, two
gateway processes, PostgreSQL and Redis are. Its firewall drops every SYN-ACK it would send
(``tc``: an htb class whose queue holds nothing), so it can open connections but nobody can open
one to it: the platform cannot dial it, as behind a NAT. It joins, the dial-back probe fails, the
host is served through tunnels to both gateways; streams are multiplexed over them, a client
that leaves cancels the engine's request (the gateway that does not drain), and usage is exact
(the billed tokens are the engine's own counters, as its heartbeats report them).

All addresses are in the test's own namespaces. Skipped without root or without ``ip``/``tc``.
"""

from __future__ import annotations

import json
import os
import secrets
import shutil
import socket
import subprocess
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any

import httpx
import pytest
from django.db import transaction

from apps.accounts.models import Organization
from apps.gateway.services import api_key_create
from apps.instances import orchestrator
from apps.instances.agents.hosts import onprem_host_issue_join
from apps.instances.models import Instance, OnPremHost, Provider
from apps.instances.services import instance_create
from apps.models.models import LlmModel
from tests.gateway.conftest import flushed_usage
from tests.processes import PYTHON, ProcessGroup, free_port, wait_for

pytestmark = pytest.mark.slow

GPUS = [{"index": 0, "name": "NVIDIA L4", "memory_mib": 23034}]
TOKEN_RATE = 40.0  # tokens per second per stream


def _run(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(list(args), capture_output=True, text=True, timeout=10)


@dataclass(frozen=True)
class Nat:
    namespace: str
    outside: str  # the root namespace's address on the link (web, gateways)
    inside: str  # the host's address, which nobody can dial

    def exec(self, *args: str) -> list[str]:
        return ["ip", "netns", "exec", self.namespace, *args]


@pytest.fixture
def nat() -> Iterator[Nat]:
    if os.geteuid() != 0 or not shutil.which("ip") or not shutil.which("tc"):
        pytest.skip("network namespaces need root, ip and tc")
    tag = secrets.token_hex(3)
    namespace, here, there = f"tnat-{tag}", f"tn{tag}a", f"tn{tag}b"
    subnet = f"10.{200 + secrets.randbelow(50)}.{secrets.randbelow(250)}"
    outside, inside = f"{subnet}.1", f"{subnet}.2"
    if _run("ip", "netns", "add", namespace).returncode:
        pytest.skip("cannot create a network namespace here")
    try:
        steps = [
            ("ip", "link", "add", here, "type", "veth", "peer", "name", there),
            ("ip", "link", "set", there, "netns", namespace),
            ("ip", "addr", "add", f"{outside}/30", "dev", here),
            ("ip", "link", "set", here, "up"),
            ("ip", "-n", namespace, "addr", "add", f"{inside}/30", "dev", there),
            ("ip", "-n", namespace, "link", "set", there, "up"),
            ("ip", "-n", namespace, "link", "set", "lo", "up"),
            ("ip", "-n", namespace, "route", "add", "default", "via", outside),
            # The host's firewall: SYN-ACKs it would send (TCP flags 0x12, 20-byte IP header)
            # go to a class whose queue holds nothing. Outgoing connections are unaffected.
            *(
                ("ip", "netns", "exec", namespace, "tc", *rule)
                for rule in (
                    ("qdisc", "add", "dev", there, "root", "handle", "1:", "htb", "default", "10"),
                    ("class", "add", "dev", there, "parent", "1:", "classid", "1:10", "htb",
                     "rate", "10gbit"),
                    ("class", "add", "dev", there, "parent", "1:", "classid", "1:20", "htb",
                     "rate", "10gbit"),
                    ("qdisc", "add", "dev", there, "parent", "1:20", "handle", "20:", "pfifo",
                     "limit", "0"),
                    ("filter", "add", "dev", there, "parent", "1:", "protocol", "ip", "prio", "1",
                     "u32", "match", "u8", "0x45", "0xff", "at", "0", "match", "ip", "protocol",
                     "6", "0xff", "match", "u8", "0x12", "0xff", "at", "33", "flowid", "1:20"),
                )
            ),
        ]  # fmt: skip
        for step in steps:
            done = _run(*step)
            if done.returncode:
                pytest.skip(f"cannot build the NAT'd namespace ({' '.join(step)}: {done.stderr})")
        yield Nat(namespace, outside, inside)
    finally:
        _run("ip", "netns", "del", namespace)  # takes the veth pair with it


def dialable(host: str, port: int) -> bool:
    with socket.socket() as sock:
        sock.settimeout(1.0)
        return sock.connect_ex((host, port)) == 0


def stream_chat(url: str, key: str, max_tokens: int, *, leave_after: int = 0) -> str:
    """A streamed chat completion's text; with ``leave_after``, the client leaves after that
    many content events."""
    body = {
        "model": "nat-bot",
        "messages": [{"role": "user", "content": "hello behind the nat"}],
        "max_tokens": max_tokens,
        "stream": True,
    }
    text, events = "", 0
    with httpx.stream(
        "POST",
        f"{url}/v1/chat/completions",
        json=body,
        headers={"Authorization": f"Bearer {key}"},
        timeout=30,
    ) as answer:
        assert answer.status_code == 200, answer.read()
        for line in answer.iter_lines():
            if not line.startswith("data: {"):
                continue
            delta = json.loads(line[6:])["choices"]
            if delta and delta[0]["delta"].get("content"):
                text += delta[0]["delta"]["content"]
                events += 1
                if leave_after and events >= leave_after:
                    return text
    return text


def engine_counters(instance_id: Any) -> tuple[float, float, float]:
    """(generated tokens, prompt tokens, requests running), from the agent's last heartbeat."""
    metrics = Instance.objects.get(id=instance_id).engine_metrics or {}
    return (
        float(metrics.get("generation_tokens_total", -1)),
        float(metrics.get("prompt_tokens_total", -1)),
        float(metrics.get("requests_running", -1)),
    )


def test_a_host_nobody_can_dial_is_served_through_its_tunnels(
    nat: Nat, processes: ProcessGroup, owner_org: Organization, tmp_path: Any
) -> None:
    started = time.monotonic()
    # Given the platform in the root namespace: a web server and two gateway processes, the
    # second of which does not drain a stream whose client left (it cancels at once)
    gateway_ports = [free_port(), free_port()]
    gateways = [f"http://{nat.outside}:{port}" for port in gateway_ports]
    common = {"INVENTIV_HEARTBEAT_INTERVAL_S": "0.3", "GATEWAY_ROUTING_REFRESH_S": "0.5"}
    web_port = free_port()
    web_url = f"http://{nat.outside}:{web_port}"
    web = processes.start(
        "web",
        [PYTHON, "-m", "uvicorn", "inventiv.asgi:application", "--host", nat.outside,
         "--port", str(web_port), "--lifespan", "off", "--log-level", "warning"],
        INVENTIV_PUBLIC_URL=web_url,
        INVENTIV_ONPREM_POLL_INTERVAL_S="0.2",
        INVENTIV_TUNNEL_GATEWAY_URLS=",".join(gateways),
        **common,
    )  # fmt: skip
    procs = [
        processes.start(
            f"gateway-{i + 1}",
            [PYTHON, "-m", "apps.gateway", "--host", nat.outside, "--port", str(port)],
            GATEWAY_DISCONNECT_DRAIN_S="60" if i == 0 else "0",
            **common,
        )
        for i, port in enumerate(gateway_ports)
    ]
    processes.wait_http(web, web_url + "/healthz")
    for proc, url in zip(procs, gateways, strict=True):
        processes.wait_http(proc, url + "/healthz")
    provider = Provider.objects.create(
        name="behind-nat", kind="onprem", config={"hourly_price_per_gpu": "0.40"}
    )
    # and a host agent in the namespace nobody can dial
    join = onprem_host_issue_join(provider=provider, name="nat-box")
    host_agent = processes.start(
        "host-agent",
        nat.exec(PYTHON, "-m", "agent.host", "--control-plane", web_url,
                 "--state-file", str(tmp_path / "host.json"), "--advertise-host", nat.inside,
                 "--gpus-json", json.dumps(GPUS)),
        INVENTIV_JOIN_TOKEN=join.join_token,
        # the gateways are plain HTTP on a test network (agent.tunnel refuses that otherwise)
        INVENTIV_AGENT_ALLOW_CLEARTEXT_TUNNEL="1",
    )  # fmt: skip

    # When it joins, then the dial-back probe fails and the host is served through tunnels
    host = wait_for(
        lambda: OnPremHost.objects.filter(id=join.host.id, probed_at__isnull=False).first(),
        timeout=20,
        message=f"the host to join\n{host_agent.log()}",
    )
    assert host.dialable is False and host.reachability == "auto" and host.uses_tunnel

    # When a model is deployed on it
    model = LlmModel.objects.create(
        organization=owner_org,
        name="nat-bot",
        engine="mock",
        model_id="meta-llama/Llama-3.1-8B-Instruct",
        gpu_count=1,
        vram_per_gpu_gb=16,
        provider=provider,
        status="deploying",
        engine_args={"token_rate": TOKEN_RATE},
    )
    with transaction.atomic():
        instance = instance_create(llm_model=model, provider=provider)
    assert orchestrator.instance_provision(instance_id=str(instance.id)).startswith("created")
    ready = wait_for(
        lambda: Instance.objects.filter(id=instance.id, status="ready").first(),
        timeout=30,
        message=f"the instance to be ready\n{host_agent.log()}",
    )
    # then its engine listens at an address nobody in the gateways' namespace can dial
    assert ready.engine_host == nat.inside
    assert not dialable(nat.inside, ready.engine_port)
    assert "tunnel to ws://" in host_agent.log()
    key = api_key_create(organization=owner_org, name="nat")[1]

    def served_by_both() -> bool:
        for url in gateways:
            answer = httpx.get(f"{url}/v1/models", headers={"Authorization": f"Bearer {key}"})
            if not answer.is_success or not answer.json()["data"][0]["ready"]:
                return False
        return True

    wait_for(served_by_both, timeout=10, message="both gateways to route nat-bot")
    generated_before, prompt_before, _ = engine_counters(instance.id)

    # When streams run through both gateways at once (multiplexed over each tunnel), and a
    # plain request too
    with ThreadPoolExecutor(max_workers=8) as pool:
        texts = list(pool.map(lambda i: stream_chat(gateways[i % 2], key, 6 + i), range(8)))
    assert [len(t.split()) for t in texts] == [6 + i for i in range(8)]
    plain = httpx.post(
        f"{gateways[0]}/v1/chat/completions",
        json={"model": "nat-bot", "messages": [{"role": "user", "content": "hi"}], "max_tokens": 5},
        headers={"Authorization": f"Bearer {key}"},
        timeout=30,
    )
    assert plain.status_code == 200 and plain.json()["usage"]["completion_tokens"] == 5
    # and a client leaves the gateway that drains (the stream is read to its end for billing)
    assert stream_chat(gateways[0], key, 20, leave_after=2)

    # Then the usage billed is exactly what the engine counted
    records = flushed_usage(10, timeout=15)
    assert len(records) == 10 and {r.instance_id for r in records} == {instance.id}
    billed = sum(r.completion_tokens for r in records)
    assert billed == sum(6 + i for i in range(8)) + 5 + 20
    wait_for(
        lambda: engine_counters(instance.id)[0] - generated_before == billed,
        timeout=10,
        message=f"the engine's counters to reach {billed}: {engine_counters(instance.id)}",
    )
    assert engine_counters(instance.id)[1] - prompt_before == sum(r.prompt_tokens for r in records)
    assert [r.status_code for r in records].count(499) == 1

    # When a client leaves a long stream through the gateway that does not drain
    long_tokens = 400  # 10 s at the engine's rate
    left_at = time.monotonic()
    assert stream_chat(gateways[1], key, long_tokens, leave_after=2)
    # Then the engine's request is cancelled: nothing runs there any more within seconds
    wait_for(
        lambda: engine_counters(instance.id)[2] == 0 and time.monotonic() - left_at > 0.5,
        timeout=5,
        message=f"the engine to stop the abandoned request: {engine_counters(instance.id)}",
    )
    assert time.monotonic() - left_at < long_tokens / TOKEN_RATE / 2
    (cancelled,) = [r for r in flushed_usage(11, timeout=15) if r.status_code == 499][1:] or [None]
    assert cancelled is not None and 2 <= cancelled.completion_tokens < long_tokens
    assert host_agent.alive(), host_agent.log()
    assert time.monotonic() - started < 30, "the test must stay bounded"

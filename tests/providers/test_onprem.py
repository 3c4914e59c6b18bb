"""On-premise hosts end to end: the real web server, a real host agent subprocess that joins
with a one-time command, and the real instance agent (mock engine) it starts."""

from __future__ import annotations

import json
import socket
import uuid
from typing import Any

import httpx
import pytest
from django.db import transaction

from apps.accounts.models import Organization
from apps.instances import orchestrator
from apps.instances.agents.hosts import onprem_host_issue_join
from apps.instances.models import Instance, OnPremAssignment, OnPremHost, Provider
from apps.instances.providers.matching import offers_for_model
from apps.instances.services import instance_create, instance_request_termination
from apps.models.models import LlmModel
from tests.processes import PYTHON, ProcessGroup, wait_for

GPUS = [
    {"index": 0, "name": "NVIDIA L4", "memory_mib": 23034},
    {"index": 1, "name": "NVIDIA L4", "memory_mib": 23034},
]


def port_open(port: int) -> bool:
    with socket.socket() as sock:
        sock.settimeout(0.2)
        return sock.connect_ex(("127.0.0.1", port)) == 0


@pytest.fixture
def onprem(transactional_db: Any) -> Provider:
    return Provider.objects.create(
        name="lab", kind="onprem", config={"hourly_price_per_gpu": "0.40", "currency": "EUR"}
    )


def test_it_refuses_a_join_token_used_twice_or_unknown(
    processes: ProcessGroup, onprem: Provider
) -> None:
    # given a web server and a join command
    _, url = processes.web()
    join = onprem_host_issue_join(provider=onprem, name="box")
    body = {"join_token": join.join_token, "hostname": "box", "advertise_host": "10.0.0.5"}
    # when it is used twice
    first = httpx.post(f"{url}/internal/agent/v1/hosts/join", json=body)
    second = httpx.post(f"{url}/internal/agent/v1/hosts/join", json=body)
    unknown = httpx.post(
        f"{url}/internal/agent/v1/hosts/join", json={**body, "join_token": "ivj_nope"}
    )
    # then only the first succeeds, and errors use the OpenAI envelope
    assert first.status_code == 200 and first.json()["credential"].startswith("ivh_")
    assert second.status_code == 401 and unknown.status_code == 401
    assert second.json()["error"]["code"] == "invalid_agent_credentials"
    assert "ivj_" not in join.command.split("INVENTIV_JOIN_TOKEN=")[0]


def test_it_runs_a_model_on_a_joined_host_and_stops_it_on_termination(
    processes: ProcessGroup, onprem: Provider, owner_org: Organization, tmp_path: Any
) -> None:
    # given a web server and a host joined with its one-time command
    _, url = processes.web(
        INVENTIV_ONPREM_POLL_INTERVAL_S="0.2", INVENTIV_HEARTBEAT_INTERVAL_S="0.3"
    )
    join = onprem_host_issue_join(provider=onprem, name="gpu-box-1")
    host_agent = processes.start(
        "host-agent",
        [
            PYTHON,
            "-m",
            "agent.host",
            "--control-plane",
            url,
            "--state-file",
            str(tmp_path / "host.json"),
            "--advertise-host",
            "127.0.0.1",
            "--gpus-json",
            json.dumps(GPUS),
        ],
        INVENTIV_JOIN_TOKEN=join.join_token,
    )
    host = wait_for(
        lambda: OnPremHost.objects.filter(id=join.host.id, joined_at__isnull=False).first(),
        timeout=30,
        message="the host to join",
    )
    assert (host.gpu_model, host.vram_per_gpu_gb, host.gpu_count) == ("NVIDIA L4", 22, 2)
    assert host_agent.alive(), host_agent.log()
    model = LlmModel.objects.create(
        organization=owner_org,
        name=f"bot-{uuid.uuid4().hex[:6]}",
        engine="mock",
        model_id="meta-llama/Llama-3.1-8B-Instruct",
        gpu_count=1,
        vram_per_gpu_gb=16,
        provider=onprem,
        status="deploying",
    )
    # the host is offered, priced per GPU
    (offer,) = offers_for_model(model)
    assert (offer.zone, offer.gpu_count, str(offer.hourly_price)) == ("gpu-box-1", 1, "0.40")
    # when an instance is provisioned
    with transaction.atomic():
        instance = instance_create(llm_model=model, provider=onprem)
    assert orchestrator.instance_provision(instance_id=str(instance.id)).startswith("created")
    # then the host starts an instance agent that registers and serves the model
    ready = wait_for(
        lambda: Instance.objects.filter(id=instance.id, status="ready").first(),
        timeout=60,
        message=f"the instance to be ready\n{host_agent.log()}",
    )
    assert ready.engine_host == "127.0.0.1"
    assert port_open(ready.engine_port)
    (assignment,) = OnPremAssignment.objects.filter(instance=instance)
    assert assignment.state == "running" and assignment.bootstrap_token_encrypted == ""
    assert assignment.gpu_indices == [0]
    # when it is terminated
    with transaction.atomic():
        instance_request_termination(instance=ready, reason="scaled down")
    assert orchestrator.instance_terminate(instance_id=str(instance.id)) == "terminated"
    # then the host stops the instance agent and its engine, and the GPU is free again
    wait_for(
        lambda: OnPremAssignment.objects.filter(id=assignment.id, state="stopped").exists(),
        timeout=40,
        message="the host to report the assignment stopped",
    )
    wait_for(lambda: not port_open(ready.engine_port), timeout=10, message="the engine to stop")
    assert host_agent.alive()
    (again,) = offers_for_model(model)
    assert again.zone == "gpu-box-1"

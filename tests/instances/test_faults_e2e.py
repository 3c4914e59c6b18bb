"""Faults, with real processes: a killed worker, a killed agent, a crashing engine, a command
delivered twice. Nothing is lost, nothing is left behind."""

from __future__ import annotations

import os
import signal
from pathlib import Path

import httpx
import pytest

from apps.instances import orchestrator
from apps.instances.choices import InstanceStatus as S
from apps.instances.models import Instance
from apps.models.models import LlmModel
from apps.models.services import model_deploy
from inventiv import crypto
from tests.instances.conftest import Platform, agent_pids, wait_status
from tests.processes import wait_for

pytestmark = pytest.mark.slow


def _only_instance(model: LlmModel) -> Instance:
    return wait_for(
        lambda: model.instances.exclude(status=S.TERMINATED).first(), message="an instance"
    )


def _agent_count(instance_id: str) -> int:
    """Agent processes (not their engines) carrying the instance's tag."""
    cmdlines = [Path(f"/proc/{pid}/cmdline").read_bytes() for pid in agent_pids(instance_id)]
    return sum(b"agent.mock_engine" not in c for c in cmdlines)


def _chat(instance: Instance) -> httpx.Response:
    return httpx.post(
        f"{instance.endpoint}/v1/chat/completions",
        json={"model": instance.llm_model.name, "messages": [{"role": "user", "content": "x"}]},
        headers={"Authorization": f"Bearer {crypto.decrypt(instance.engine_secret_encrypted)}"},
        timeout=5,
    )


def test_a_command_delivered_twice_starts_one_machine(
    platform: Platform, mock_model: LlmModel
) -> None:
    # Given a deployed model whose provision command is then run again by hand
    platform.worker.stop()  # nobody else consumes: we deliver the command ourselves, twice
    model_deploy(model=mock_model, replicas=1)
    orchestrator.model_code_converge(model_code_id=mock_model.id)
    instance = _only_instance(mock_model)
    first = orchestrator.instance_provision(instance_id=str(instance.id))
    Instance.objects.filter(id=instance.id).update(status=S.PROVISIONING)  # as if not recorded
    second = orchestrator.instance_provision(instance_id=str(instance.id))
    # Then both calls name the same machine: one agent process
    assert first.startswith("created") and first == second
    wait_for(lambda: len(agent_pids(str(instance.id))) >= 1, message="agent process")
    assert _agent_count(str(instance.id)) == 1


def test_a_worker_killed_while_provisioning_converges_to_one_machine(
    platform: Platform, mock_model: LlmModel
) -> None:
    # Given a deploy command picked up by a worker that is killed as soon as the machine exists
    model_deploy(model=mock_model, replicas=1)
    instance = _only_instance(mock_model)
    wait_for(
        lambda: agent_pids(str(instance.id)),
        timeout=20,
        interval=0.005,
        message="the agent to be spawned",
    )
    platform.worker.kill(signal.SIGKILL)
    # When a new worker starts (and the reconciler re-sends what was lost)
    platform.restart_worker()
    # Then the instance converges: ready, with exactly one machine
    wait_status(str(instance.id), S.READY, timeout=40)
    assert mock_model.instances.exclude(status=S.TERMINATED).count() == 1
    assert _agent_count(str(instance.id)) == 1
    assert _chat(Instance.objects.get(id=instance.id)).status_code == 200


def test_a_killed_agent_leaves_ready_and_is_replaced(
    platform: Platform, mock_model: LlmModel
) -> None:
    model_deploy(model=mock_model, replicas=1)
    instance = _only_instance(mock_model)
    wait_status(str(instance.id), S.READY, timeout=30)
    # When the agent (and so its engine) is killed
    for pid in agent_pids(str(instance.id)):
        os.kill(pid, signal.SIGKILL)
    # Then the instance leaves ready within the heartbeat deadline, and a replacement serves
    wait_for(
        lambda: Instance.objects.get(id=instance.id).status != S.READY,
        timeout=10,
        message="leaving ready",
    )
    wait_for(
        lambda: Instance.objects.get(id=instance.id).status == S.TERMINATED,
        timeout=30,
        message="terminated",
    )
    replacement = wait_for(
        lambda: mock_model.instances.filter(status=S.READY).exclude(id=instance.id).first(),
        timeout=40,
        message="a ready replacement",
    )
    statuses = list(Instance.objects.get(id=instance.id).events.values_list("to_status", flat=True))
    assert S.UNAVAILABLE in statuses
    assert _chat(replacement).status_code == 200


def test_a_crashing_engine_is_restarted_and_not_routable_meanwhile(
    platform: Platform, mock_model: LlmModel
) -> None:
    model_deploy(model=mock_model, replicas=1)
    instance = _only_instance(mock_model)
    wait_status(str(instance.id), S.READY, timeout=30)
    # When the engine crashes
    with pytest.raises(httpx.RemoteProtocolError):  # it dies before answering
        httpx.post(
            f"{Instance.objects.get(id=instance.id).endpoint}/mock/control",
            json={"crash": True},
            headers={"Authorization": f"Bearer {crypto.decrypt(instance.engine_secret_encrypted)}"},
            timeout=5,
        )
    # Then the instance is not routable while it is down, and ready again after the restart
    wait_for(
        lambda: Instance.objects.get(id=instance.id).status == S.STARTING,
        timeout=10,
        message="not routable",
    )
    wait_status(str(instance.id), S.READY, timeout=30)
    instance.refresh_from_db()
    assert instance.engine_status["restarts"] >= 1
    assert _chat(instance).status_code == 200
    assert mock_model.instances.count() == 1


def test_a_machine_created_while_its_instance_was_terminated_is_released_at_once(
    platform: Platform, mock_model: LlmModel, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Given a provision command whose create call returns after a terminate went through
    from apps.instances.providers.local import LocalAdapter
    from apps.instances.services import instance_request_termination

    platform.worker.stop()  # we run the command ourselves, with the race in the middle
    model_deploy(model=mock_model, replicas=1)
    orchestrator.model_code_converge(model_code_id=mock_model.id)
    instance = _only_instance(mock_model)
    create = LocalAdapter.create_machine

    def create_then_terminated(self: LocalAdapter, spec: object) -> object:
        machine = create(self, spec)  # type: ignore[arg-type]
        racing = Instance.objects.get(id=instance.id)
        instance_request_termination(instance=racing, reason="user terminated it meanwhile")
        orchestrator.instance_terminate(instance_id=str(instance.id))
        return machine

    monkeypatch.setattr(LocalAdapter, "create_machine", create_then_terminated)
    # When the create returns
    outcome = orchestrator.instance_provision(instance_id=str(instance.id))
    # Then the machine is released at once: no agent left
    assert outcome.endswith("released at once: instance terminated")
    assert Instance.objects.get(id=instance.id).status == S.TERMINATED
    wait_for(lambda: agent_pids(str(instance.id)) == [], timeout=15, message="no agent left")

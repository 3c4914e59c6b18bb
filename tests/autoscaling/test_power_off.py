"""Scale to zero by power-off: the drained last replica of a model code whose
``scale_to_zero_mode`` is ``power_off`` is powered off with its disk kept, and the next wake
powers it on instead of creating a machine; on the Scaleway fake API (real SDK), moto (AWS)
and the local provider's processes. What the kept disk costs is billed; a failed power-off
terminates; a model code that stops powering off terminates what it kept."""

from __future__ import annotations

import asyncio
import json
import uuid
from collections.abc import Callable
from datetime import timedelta
from decimal import Decimal
from pathlib import Path
from typing import Any

import httpx
import pytest
from django.conf import settings
from django.utils import timezone
from rest_framework.test import APIClient

from agent.protocol import AgentState, Heartbeat
from apps.accounts.models import Organization
from apps.billing.costs import cost_forecast, instance_costs
from apps.gateway.capacity import RedisLoadBoard
from apps.gateway.services import api_key_create
from apps.instances import orchestrator
from apps.instances.agents.bootstrap import boot_volume_gb
from apps.instances.agents.services import agent_heartbeat, desired_for
from apps.instances.choices import LIVE, InstanceStatus
from apps.instances.models import Instance, InstanceEvent, Provider
from apps.instances.orchestrator.autoscaler import WAKE, autoscale_model_code
from apps.instances.orchestrator.power import instance_enforce_drain_deadlines
from apps.instances.orchestrator.scaling import model_code_converge
from apps.instances.providers import get_adapter
from apps.instances.providers.aws import AwsAdapter
from apps.instances.providers.base import MachineSpec, PowerAction
from apps.instances.providers.catalog import catalog_sync
from apps.instances.providers.local import LocalAdapter, _records_dir, _tagged_pids
from apps.models.models import LlmModel, ScalingDecision
from apps.models.services import model_set_scaling_policy
from tests.instances.conftest import Platform, agent_pids, wait_status
from tests.processes import wait_for
from tests.providers.fake_scaleway import FakeScaleway
from tests.providers.test_aws import live_instances
from tests.providers.test_provisioning_faults import NOTHING, model_code, terminate

pytestmark = pytest.mark.django_db
S = InstanceStatus
POWER_OFF = {
    "min_replicas": 0,
    "max_replicas": 1,
    "scale_to_zero_mode": "power_off",
    "scale_up_cooldown_s": 0,
    "scale_down_cooldown_s": 0,
    "idle_to_zero_s": 0,
}


def _beat(instance: Instance, state: AgentState) -> None:
    instance.refresh_from_db()
    agent_heartbeat(
        instance=instance, heartbeat=Heartbeat(instance_id=str(instance.id), state=state)
    )


def _serving(org: Organization, provider: Provider, **needs: Any) -> Instance:
    """A model code at one replica scaling to zero by power-off, its instance provisioned at
    the provider and serving (its agent registered)."""
    model = model_code(org, provider, **needs)
    model_set_scaling_policy(model=model, **POWER_OFF)
    model_code_converge(model_code_id=model.id)
    instance = Instance.objects.get(llm_model=model)
    assert orchestrator.instance_provision(instance_id=str(instance.id)).startswith("created")
    Instance.objects.filter(id=instance.id).update(
        status=S.READY, registered_at=timezone.now(), last_heartbeat_at=timezone.now()
    )
    instance.refresh_from_db()
    return instance


def _scale_to_zero(instance: Instance) -> None:
    """No load: the autoscaler scales to zero, the instance drains, its agent reports drained."""
    decision = autoscale_model_code(model_code_id=instance.llm_model_id)
    assert decision is not None and (decision.replicas_before, decision.replicas_after) == (1, 0)
    instance.refresh_from_db()
    assert instance.status == S.DRAINING
    _beat(instance, AgentState.DRAINED)
    instance.refresh_from_db()
    assert instance.status == S.POWERING_OFF
    assert desired_for(instance).action == "drain"  # never stop: the agent keeps its credential
    result = orchestrator.instance_power_apply(instance_id=str(instance.id), action="poweroff")
    assert result.startswith("poweroff: stopped"), result
    instance.refresh_from_db()
    assert instance.status == S.POWERED_OFF


def _wake(instance: Instance) -> None:
    """A request held at zero: the wake powers the kept machine on; its agent resumes."""
    asyncio.run(
        RedisLoadBoard().publish(
            gateway_id="g1", counts={instance.llm_model_id: (1, 1)}, requested=set()
        )
    )
    decision = autoscale_model_code(model_code_id=instance.llm_model_id, trigger=WAKE)
    assert decision is not None and (decision.replicas_before, decision.replicas_after) == (0, 1)
    instance.refresh_from_db()
    assert instance.status == S.BOOTING
    result = orchestrator.instance_power_apply(instance_id=str(instance.id), action="poweron")
    assert result.startswith("poweron: running"), result
    _beat(instance, AgentState.STARTING)  # the resumed agent's first heartbeat
    instance.refresh_from_db()
    assert instance.status == S.STARTING
    assert instance.status_reason == "machine powered on: the agent resumed"


def _history(instance: Instance) -> list[str]:
    return list(instance.events.order_by("id").values_list("to_status", flat=True))


@pytest.fixture
def scw(scw_provider: Provider) -> Provider:
    assert catalog_sync(provider_id=scw_provider.id).error == ""
    scw_provider.config = {**scw_provider.config, "powered_off_gb_hour_price": "0.0001"}
    scw_provider.save(update_fields=["config"])
    return scw_provider


def test_scaleway_a_model_code_powered_off_at_zero_wakes_without_creating_a_server(
    owner_org: Organization, scw: Provider, fake_scw: FakeScaleway
) -> None:
    # given a serving replica on Scaleway
    instance = _serving(owner_org, scw)
    server_id = instance.provider_resource_id
    creates = fake_scw.count("POST", r"/servers$")
    assert creates == 1 and fake_scw.count("POST", r"/action$") == 1  # poweron at create
    # when the model code scales to zero, then the server is stopped, not deleted
    _scale_to_zero(instance)
    assert fake_scw.servers[server_id]["state"] == "stopped"
    assert fake_scw.count("POST", r"/action$") == 2
    kept = Decimal("0.0001") * boot_volume_gb(instance.llm_model)
    assert Decimal(instance.provider_data["powered_off_hourly_price"]) == kept
    # when a request wakes it, then the same server is powered on: no server created
    _wake(instance)
    assert list(fake_scw.servers) == [server_id]
    assert fake_scw.count("POST", r"/servers$") == creates
    assert fake_scw.count("POST", r"/action$") == 3  # the wake's poweron
    assert fake_scw.servers[server_id]["state"] == "running"
    assert Instance.objects.filter(llm_model_id=instance.llm_model_id).count() == 1
    assert _history(instance)[-5:] == [
        S.DRAINING,
        S.POWERING_OFF,
        S.POWERED_OFF,
        S.BOOTING,
        S.STARTING,
    ]
    terminate(instance)
    assert fake_scw.leaks() == NOTHING


def test_aws_a_model_code_powered_off_at_zero_wakes_without_running_an_instance(
    owner_org: Organization, aws_provider: Provider, monkeypatch: pytest.MonkeyPatch
) -> None:
    # given a serving replica on EC2 (moto), and a record of the adapter's calls
    assert catalog_sync(provider_id=aws_provider.id).error == ""
    calls: list[str] = []
    for name in ("create_machine", "power"):
        original = getattr(AwsAdapter, name)

        def spy(self: Any, *args: Any, _name: str = name, _f: Any = original) -> Any:
            calls.append(_name if _name != "power" else f"power:{args[1]}")
            return _f(self, *args)

        monkeypatch.setattr(AwsAdapter, name, spy)
    instance = _serving(owner_org, aws_provider, vram_per_gpu_gb=20)
    assert calls == ["create_machine"] and len(live_instances()) == 1
    # when it scales to zero, then the EC2 instance is stopped (its EBS volume kept)
    _scale_to_zero(instance)
    (ec2,) = live_instances()
    assert ec2["State"]["Name"] == "stopped" and ec2["InstanceId"] == instance.provider_resource_id
    # when a request wakes it, then the same EC2 instance is started: none is run
    _wake(instance)
    (ec2,) = live_instances()
    assert ec2["State"]["Name"] == "running" and ec2["InstanceId"] == instance.provider_resource_id
    assert calls == ["create_machine", "power:poweroff", "power:poweron"]
    assert Instance.objects.filter(llm_model_id=instance.llm_model_id).count() == 1
    terminate(instance)
    assert live_instances() == []


def test_a_failed_power_off_terminates_and_the_next_wake_creates_a_machine(
    owner_org: Organization, scw: Provider, fake_scw: FakeScaleway
) -> None:
    # given a replica draining to zero whose server is deleted behind our back
    instance = _serving(owner_org, scw)
    autoscale_model_code(model_code_id=instance.llm_model_id)
    _beat(instance, AgentState.DRAINED)
    get_adapter(scw).terminate_machine(get_adapter(scw).get_machine(instance.provider_resource_id))
    # when the power-off fails, then the instance is terminated instead
    result = orchestrator.instance_power_apply(instance_id=str(instance.id), action="poweroff")
    assert result.startswith("failed: not_found"), result
    instance.refresh_from_db()
    assert instance.status == S.TERMINATING and "terminated instead" in instance.status_reason
    # and the next wake creates a machine (nothing is kept)
    orchestrator.instance_terminate(instance_id=str(instance.id))
    LlmModel.objects.filter(id=instance.llm_model_id).update(desired_replicas=1)
    assert model_code_converge(model_code_id=instance.llm_model_id).created == 1


def test_only_the_last_replica_is_kept_and_only_while_the_model_code_wants_power_off(
    owner_org: Organization, scw: Provider, fake_scw: FakeScaleway
) -> None:
    # given a replica drained while its model code still wants one: it terminates
    instance = _serving(owner_org, scw)
    Instance.objects.filter(id=instance.id).update(status=S.DRAINING)
    _beat(instance, AgentState.DRAINED)
    instance.refresh_from_db()
    assert instance.status == S.TERMINATING
    orchestrator.instance_terminate(instance_id=str(instance.id))
    # given another one kept powered off
    model = LlmModel.objects.get(id=instance.llm_model_id)
    model_code_converge(model_code_id=model.id)
    kept = Instance.objects.get(llm_model=model, status__in=LIVE)
    assert orchestrator.instance_provision(instance_id=str(kept.id)).startswith("created")
    Instance.objects.filter(id=kept.id).update(status=S.READY, registered_at=timezone.now())
    _scale_to_zero(kept)
    # when the model code switches to terminate at zero, then the kept machine is released
    model_set_scaling_policy(model=model, scale_to_zero_mode="terminate")
    model_code_converge(model_code_id=model.id)
    kept.refresh_from_db()
    assert kept.status == S.TERMINATING
    orchestrator.instance_terminate(instance_id=str(kept.id))
    assert fake_scw.leaks() == NOTHING


def test_the_powered_off_time_is_billed_at_the_kept_disk_price(
    owner_org: Organization, scw: Provider, fake_scw: FakeScaleway
) -> None:
    # given an instance that served for 10 minutes, then was powered off for 50
    instance = _serving(owner_org, scw)
    _scale_to_zero(instance)
    now = timezone.now()
    start = now - timedelta(hours=1)
    events = {e.to_status: e for e in InstanceEvent.objects.filter(instance=instance)}
    InstanceEvent.objects.filter(instance=instance).update(created_at=start)
    InstanceEvent.objects.filter(id=events[S.POWERED_OFF].id).update(
        created_at=start + timedelta(minutes=10)
    )
    kept = Decimal(instance.provider_data["powered_off_hourly_price"])
    # when / then
    (cost,) = [
        c for c in instance_costs(since=start, until=now) if c.instance_id == str(instance.id)
    ]
    assert (cost.minutes, cost.powered_off_minutes) == (10, 50)
    expected = instance.hourly_price * 10 / 60 + kept * 50 / 60
    assert cost.cost == expected.quantize(Decimal("0.000001"))
    assert cost.cost < instance.hourly_price  # far less than the hour at the machine's price
    # and the hourly burn counts the kept disk, not the machine
    forecast = cost_forecast(now=now, month_start=start, month_end=now + timedelta(days=1))
    assert forecast["hourly_burn"] == kept.quantize(Decimal("0.000001"))
    terminate(instance)


def test_a_drain_lasts_the_model_codes_own_deadline_and_never_less(
    owner_org: Organization, scw: Provider, fake_scw: FakeScaleway
) -> None:
    # given a replica draining for 5 minutes, its model code allowing 15
    instance = _serving(owner_org, scw)
    model_set_scaling_policy(model=instance.llm_model, drain_timeout_s=900)
    Instance.objects.filter(id=instance.id).update(
        status=S.DRAINING, status_changed_at=timezone.now() - timedelta(minutes=5)
    )
    # when the reconciler enforces deadlines, then it is left to finish its streams
    assert instance_enforce_drain_deadlines(now=timezone.now())["drain_deadlines"] == 0
    assert Instance.objects.get(id=instance.id).status == S.DRAINING
    # and past 15 minutes it leaves (powered off here: the model code wants zero replicas)
    LlmModel.objects.filter(id=instance.llm_model_id).update(desired_replicas=0)
    later = timezone.now() + timedelta(minutes=11)
    assert instance_enforce_drain_deadlines(now=later)["drain_deadlines"] == 1
    instance.refresh_from_db()
    assert instance.status == S.POWERING_OFF and "drain deadline (900s)" in instance.status_reason
    # without its own deadline, the platform's applies
    other = _serving(owner_org, scw)
    Instance.objects.filter(id=other.id).update(
        status=S.DRAINING,
        status_changed_at=timezone.now() - timedelta(seconds=settings.DRAIN_DEADLINE_S + 5),
    )
    assert instance_enforce_drain_deadlines(now=timezone.now())["drain_deadlines"] == 1
    other.refresh_from_db()
    assert other.status == S.TERMINATING  # its model code wants a replica: not kept
    # a power-off that never completes terminates
    stuck = timezone.now() + timedelta(hours=1)
    assert instance_enforce_drain_deadlines(now=stuck)["power_off_deadlines"] == 1
    for done in (instance, other):
        orchestrator.instance_terminate(instance_id=str(done.id))
    assert fake_scw.leaks() == NOTHING


# --- the local provider ----------------------------------------------------------------------


_URL = "http://127.0.0.1:9"  # nothing listens: the agents keep retrying, alive


def _spec(instance_id: str) -> MachineSpec:
    # An agent that cannot reach a control plane keeps retrying: a live process to power.
    return MachineSpec(
        instance_id=instance_id,
        instance_type="local",
        zone="local",
        control_plane_url=_URL,
        bootstrap_token="ivb_test",
        engine_port=8000,
    )


def _wait(check: Callable[[], bool], message: str) -> None:
    wait_for(check, timeout=20, message=message)


def test_the_local_provider_powers_an_agent_off_and_on_keeping_its_id_and_state_dir() -> None:
    adapter = LocalAdapter(Provider(name="local", kind="local"))
    instance_id = str(uuid.uuid4())
    machine = adapter.create_machine(_spec(instance_id))
    state_dir = Path(_records_dir()) / f"{instance_id}.state"
    try:
        first = _tagged_pids()[instance_id]
        # the credential a registered agent stores on its disk
        stored = {"instance_id": instance_id, "credential": "ivc_x", "control_plane": _URL}
        (state_dir / "credential.json").write_text(json.dumps(stored))
        # when powered off: no process left, the machine found stopped by its id
        off = adapter.power(machine, PowerAction.POWEROFF)
        assert off.state == "stopped" and instance_id not in _tagged_pids()
        assert adapter.get_machine(machine.resource_id).state == "stopped"
        assert adapter.find_machine(instance_id) is not None
        assert instance_id in {m.instance_id for m in adapter.list_machines()}
        assert adapter.power(off, PowerAction.POWEROFF).state == "stopped"  # idempotent
        # when powered on: a new agent process, the same machine id and state directory
        on = adapter.power(off, PowerAction.POWERON)
        assert on.state == "running" and on.resource_id == machine.resource_id
        assert _tagged_pids()[instance_id] != first
        env = Path(f"/proc/{_tagged_pids()[instance_id][0]}/environ").read_bytes().split(b"\0")
        assert f"INVENTIV_AGENT_STATE_DIR={state_dir}".encode() in env
        assert b"INVENTIV_BOOTSTRAP_TOKEN=" in env  # no token: it resumes with its credential
        log = Path(_records_dir()) / f"{instance_id}.log"
        _wait(
            lambda: f"resuming as instance {instance_id}" in log.read_text(),
            "the powered-on agent resuming with its stored credential",
        )
    finally:
        adapter.terminate_machine(machine)
    # and terminating forgets the record and the disk
    assert adapter.find_machine(instance_id) is None and not state_dir.exists()


# --- end to end, the local provider -----------------------------------------------------------


@pytest.mark.slow
def test_on_the_real_platform_a_powered_off_model_code_wakes_its_own_machine(
    platform: Platform, api: APIClient, local_provider: Provider
) -> None:
    # given a model code serving one replica (web with the gateway, worker, beat, a real agent)
    created = api.post(
        "/api/v1/model-codes/",
        {"name": "sales-bot", "engine": "mock", "model_id": "org/model", "gpu_count": 0},
        format="json",
    )
    model = LlmModel.objects.get(id=created.json()["id"])
    api.post(f"/api/v1/model-codes/{model.id}/deploy/", {"replicas": 1})
    wait_for(
        lambda: Instance.objects.filter(llm_model=model, status=S.READY).exists(),
        timeout=60,
        message="the first replica ready",
    )
    instance = Instance.objects.get(llm_model=model)
    registered_at = instance.registered_at
    # when its policy lets it scale to zero by power-off, and no request comes
    policy = {**POWER_OFF, "idle_to_zero_s": 1, "hold_timeout_s": 120}
    changed = api.patch(f"/api/v1/model-codes/{model.id}/scaling/", policy, format="json")
    assert changed.status_code == 200, changed.json()
    # then it drains and its machine is powered off: no process left, the record kept
    wait_status(str(instance.id), S.POWERED_OFF, timeout=60)
    assert agent_pids(str(instance.id)) == []
    # when a request comes through the gateway, it is held while the same machine powers on
    _, key = api_key_create(organization=model.organization, name="wake")
    response = httpx.post(
        platform.url + "/v1/chat/completions",
        json={"model": "sales-bot", "messages": [{"role": "user", "content": "hi"}]},
        headers={"Authorization": f"Bearer {key}"},
        timeout=120,
    )
    # then it is served by that instance: no new instance, machine nor registration
    assert response.status_code == 200, response.text
    assert response.json()["choices"][0]["message"]["content"]
    assert list(Instance.objects.filter(llm_model=model).values_list("id", flat=True)) == [
        instance.id
    ]
    instance.refresh_from_db()
    assert instance.status == S.READY and instance.registered_at == registered_at
    assert agent_pids(str(instance.id))
    assert _history(instance)[-6:] == [
        S.DRAINING,
        S.POWERING_OFF,
        S.POWERED_OFF,
        S.BOOTING,
        S.STARTING,
        S.READY,
    ]
    woke = ScalingDecision.objects.filter(model_code=model, replicas_after=1).first()
    assert woke is not None and woke.replicas_before == 0 and woke.inputs["gateway_held"] >= 1

"""Getting a machine by its provider id and power actions: the Scaleway adapter (real SDK,
fake API), the AWS adapter (moto), the on-premise adapter (which has none), the
terminate step finding a machine whose tags were lost, and the admin's "Reboot machine"."""

from __future__ import annotations

import os
import subprocess
import uuid
from typing import Any

import boto3
import pytest
from django.contrib.messages import get_messages
from django.test import Client
from django.utils import timezone

from apps.accounts.models import Organization
from apps.instances import orchestrator
from apps.instances.models import Instance, Provider
from apps.instances.providers import get_adapter
from apps.instances.providers.base import (
    Machine,
    MachineNotFound,
    NotSupported,
    PowerAction,
    ProviderError,
)
from apps.instances.providers.catalog import catalog_sync
from apps.instances.providers.local import TAG_ENV, LocalAdapter
from apps.instances.providers.onprem import OnPremAdapter
from apps.instances.services import instance_power
from apps.instances.tasks import instance_power_task
from tests.providers.fake_scaleway import FakeScaleway
from tests.providers.test_aws import capture, live_instances
from tests.providers.test_aws import spec as aws_spec
from tests.providers.test_provisioning_faults import NOTHING, model_code, new_instance, terminate
from tests.providers.test_scaleway import spec as scw_spec


@pytest.fixture
def scw_catalog(scw_provider: Provider) -> Provider:
    assert catalog_sync(provider_id=scw_provider.id).error == ""
    return scw_provider


def provisioned(org: Organization, provider: Provider, **needs: Any) -> Instance:
    instance = new_instance(model_code(org, provider, **needs), provider)
    assert orchestrator.instance_provision(instance_id=str(instance.id)).startswith("created")
    instance.refresh_from_db()
    return instance


# --- Scaleway ---------------------------------------------------------------------------------


def test_scaleway_gets_a_machine_by_id_in_any_zone_and_not_found_once_deleted(
    scw_provider: Provider, fake_scw: FakeScaleway
) -> None:
    # given a server in the second configured zone
    adapter = get_adapter(scw_provider)
    created = adapter.create_machine(scw_spec(zone="nl-ams-1"))
    # when / then it is found by its id alone
    machine = adapter.get_machine(created.resource_id)
    assert (machine.resource_id, machine.zone, machine.state) == (
        created.resource_id,
        "nl-ams-1",
        "running",
    )
    assert machine.instance_id == created.instance_id and machine.attached["ips"]
    # and once terminated it is not found, nor is an id that never existed
    adapter.terminate_machine(created)
    with pytest.raises(MachineNotFound):
        adapter.get_machine(created.resource_id)
    with pytest.raises(MachineNotFound):
        adapter.get_machine(str(uuid.uuid4()))


def test_scaleway_powers_off_on_and_reboots_waiting_for_each_state(
    scw_provider: Provider, fake_scw: FakeScaleway
) -> None:
    # given a running server whose transitions take a few polls
    adapter = get_adapter(scw_provider)
    machine = adapter.create_machine(scw_spec())
    fake_scw.boot_polls = fake_scw.stop_polls = 3
    # when / then each action returns once the server is in its resulting state
    off = adapter.power(machine, PowerAction.POWEROFF)
    assert off.state == "stopped" and fake_scw.servers[machine.resource_id]["state"] == "stopped"
    assert adapter.power(off, PowerAction.POWEROFF).state == "stopped"  # already: nothing sent
    assert fake_scw.count("POST", "/action$") == 2  # poweron at create, one poweroff
    on = adapter.power(off, PowerAction.POWERON)
    assert on.state == "running" and on.public_ip == machine.public_ip
    rebooted = adapter.power(on, PowerAction.REBOOT)
    assert rebooted.state == "running"
    assert fake_scw.servers[machine.resource_id]["reboots"] == 1
    # and the machine and everything it holds still terminate cleanly
    adapter.terminate_machine(rebooted)
    assert fake_scw.leaks() == NOTHING


def test_scaleway_power_errors_are_typed(scw_provider: Provider, fake_scw: FakeScaleway) -> None:
    # given
    adapter = get_adapter(scw_provider)
    machine = adapter.create_machine(scw_spec())
    off = adapter.power(machine, PowerAction.POWEROFF)
    # a stopped server cannot be rebooted
    with pytest.raises(ProviderError, match="only a running server can be rebooted"):
        adapter.power(off, PowerAction.REBOOT)
    # no stock left at power-on is OutOfCapacity, as at create
    fake_scw.stock[("fr-par-2", "L4-1-24G")] = 0
    with pytest.raises(ProviderError) as no_stock:
        adapter.power(off, PowerAction.POWERON)
    assert no_stock.value.code == "out_of_capacity"
    # a state not reached in time is transient
    fake_scw.stock.clear()
    fake_scw.boot_polls = 10**6
    with pytest.raises(ProviderError) as slow:
        adapter.power(off, PowerAction.POWERON)
    assert slow.value.transient and "not running yet" in str(slow.value)
    # and a deleted server is MachineNotFound
    fake_scw.boot_polls = 1
    adapter.terminate_machine(off)
    with pytest.raises(MachineNotFound):
        adapter.power(off, PowerAction.POWERON)


def test_terminate_releases_a_scaleway_machine_whose_tags_were_lost(
    owner_org: Organization, scw_catalog: Provider, fake_scw: FakeScaleway
) -> None:
    # given a provisioned instance whose server lost every tag (edited in the console)
    instance = provisioned(owner_org, scw_catalog)
    with fake_scw.lock:
        fake_scw.servers[instance.provider_resource_id]["tags"] = []
    assert get_adapter(scw_catalog).find_machine(str(instance.id)) is None
    # when it is terminated, the machine is found by its recorded id and released with all
    # it held
    terminate(instance)
    # then
    assert fake_scw.leaks() == NOTHING
    instance.refresh_from_db()
    assert instance.status == "terminated" and instance.status_reason == "machine released"


def test_terminate_leaves_alone_a_recorded_machine_now_tagged_for_another_instance(
    owner_org: Organization, scw_catalog: Provider, fake_scw: FakeScaleway
) -> None:
    # given the recorded server carries another instance's tag
    instance = provisioned(owner_org, scw_catalog)
    other = str(uuid.uuid4())
    with fake_scw.lock:
        fake_scw.servers[instance.provider_resource_id]["tags"] = [f"inventiv-instance={other}"]
    # when
    terminate(instance)
    # then it is not ours to release
    assert list(fake_scw.servers) == [instance.provider_resource_id]
    get_adapter(scw_catalog).terminate_machine(
        get_adapter(scw_catalog).get_machine(instance.provider_resource_id)
    )


# --- AWS ----------------------------------------------------------------------------------------


def test_aws_gets_a_machine_by_id_and_not_found_when_unknown_or_terminated(
    aws_provider: Provider,
) -> None:
    # given
    adapter = get_adapter(aws_provider)
    created = adapter.create_machine(aws_spec())
    # when / then
    machine = adapter.get_machine(created.resource_id)
    assert (machine.resource_id, machine.state) == (created.resource_id, "running")
    assert machine.instance_id == created.instance_id and machine.zone == "eu-west-3a"
    with pytest.raises(MachineNotFound):
        adapter.get_machine("i-0123456789abcdef0")
    adapter.terminate_machine(created)
    with pytest.raises(MachineNotFound):
        adapter.get_machine(created.resource_id)  # still described by EC2, but terminated


def test_aws_stops_starts_and_reboots_waiting_for_each_state(aws_provider: Provider) -> None:
    # given
    adapter = get_adapter(aws_provider)
    machine = adapter.create_machine(aws_spec())
    started = capture(adapter, "StartInstances")
    stopped = capture(adapter, "StopInstances")
    rebooted = capture(adapter, "RebootInstances")
    # when / then
    assert adapter.power(machine, PowerAction.POWEROFF).state == "stopped"
    assert adapter.power(machine, PowerAction.POWEROFF).state == "stopped"  # nothing sent
    with pytest.raises(ProviderError, match="only a running instance can be rebooted"):
        adapter.power(machine, PowerAction.REBOOT)
    assert adapter.power(machine, PowerAction.POWERON).state == "running"
    assert adapter.power(machine, PowerAction.REBOOT).state == "running"
    ids = [{"InstanceIds": [machine.resource_id]}]
    assert (stopped, started, rebooted) == (ids, ids, ids)
    adapter.terminate_machine(machine)
    with pytest.raises(MachineNotFound):
        adapter.power(machine, PowerAction.POWERON)


def test_terminate_releases_an_aws_machine_whose_tags_were_lost(
    owner_org: Organization, aws_provider: Provider
) -> None:
    # given
    assert catalog_sync(provider_id=aws_provider.id).error == ""
    instance = provisioned(owner_org, aws_provider, vram_per_gpu_gb=20)
    ec2 = boto3.client("ec2", region_name="eu-west-3")
    ec2.delete_tags(
        Resources=[instance.provider_resource_id],
        Tags=[{"Key": "inventiv-instance"}, {"Key": "inventiv-managed"}],
    )
    # when
    terminate(instance)
    # then
    assert live_instances() == []


# --- on-premise: no power actions (the local provider's: tests/autoscaling/test_power_off.py) --


def test_onprem_refuses_power_actions_clearly(db: Any) -> None:
    # given
    local = LocalAdapter(Provider(name="local", kind="local"))
    onprem = OnPremAdapter(Provider.objects.create(name="lab", kind="onprem"))
    machine = Machine(resource_id="onprem-1", instance_id=None, state="running")
    # when / then
    assert not onprem.supports_power
    with pytest.raises(NotSupported, match=r"reboot is not supported by onprem$"):
        onprem.power(machine, PowerAction.REBOOT)
    # and ids that name no live machine are not found
    with pytest.raises(MachineNotFound):
        onprem.get_machine("onprem-999999")
    with pytest.raises(MachineNotFound):
        local.get_machine("local-not-a-pid")


def test_local_gets_the_tagged_process_by_id_and_not_an_untagged_one() -> None:
    # given a process tagged for an instance, and one that is not
    instance_id = str(uuid.uuid4())
    tagged = subprocess.Popen(["sleep", "30"], env={**os.environ, TAG_ENV: instance_id})
    untagged = subprocess.Popen(["sleep", "30"])
    adapter = LocalAdapter(Provider(name="local", kind="local"))
    try:
        # when / then
        machine = adapter.get_machine(f"local-{tagged.pid}")
        assert (machine.instance_id, machine.state) == (instance_id, "running")
        with pytest.raises(MachineNotFound):
            adapter.get_machine(f"local-{untagged.pid}")
        adapter.terminate_machine(machine)
        tagged.wait(timeout=15)
        with pytest.raises(MachineNotFound):
            adapter.get_machine(f"local-{tagged.pid}")
    finally:
        for proc in (tagged, untagged):
            proc.kill()
            proc.wait()


# --- the service, the task and the admin action --------------------------------------------


def test_instance_power_sends_the_task_after_commit_and_the_task_reboots_the_machine(
    owner_org: Organization,
    scw_catalog: Provider,
    fake_scw: FakeScaleway,
    monkeypatch: pytest.MonkeyPatch,
    django_capture_on_commit_callbacks: Any,
) -> None:
    # given
    instance = provisioned(owner_org, scw_catalog)
    sent: list[dict[str, Any]] = []
    monkeypatch.setattr(instance_power_task, "delay", lambda **kw: sent.append(kw))
    # when
    with django_capture_on_commit_callbacks(execute=True):
        instance_power(instance=instance, action="reboot", requested_by="ops")
    # then the provider is called only by the task
    assert sent == [{"instance_id": str(instance.id), "action": "reboot"}]
    assert "reboots" not in fake_scw.servers[instance.provider_resource_id]
    assert instance_power_task(**sent[0]) == "reboot: running"
    assert fake_scw.servers[instance.provider_resource_id]["reboots"] == 1
    # and a provider error is returned by the task, not raised (no retry of a reboot)
    with fake_scw.lock:
        fake_scw.servers[instance.provider_resource_id]["state"] = "stopped"
    assert instance_power_task(**sent[0]).startswith("failed: provider_error:")
    instance.refresh_from_db()
    assert instance.status == "booting"  # power actions never change the status
    assert instance.maintenance_until is not None  # missed heartbeats are expected meanwhile
    terminate(instance)
    assert fake_scw.leaks() == NOTHING


def test_instance_power_refuses_what_cannot_apply(
    owner_org: Organization, scw_catalog: Provider, fake_scw: FakeScaleway
) -> None:
    instance = provisioned(owner_org, scw_catalog)
    with pytest.raises(ProviderError, match="unknown power action"):
        instance_power(instance=instance, action="hibernate")
    onprem = Provider.objects.create(name="lab", kind="onprem")
    Instance.objects.filter(id=instance.id).update(provider=onprem)
    instance.refresh_from_db()
    with pytest.raises(NotSupported, match="not supported by onprem"):
        instance_power(instance=instance, action="reboot")
    Instance.objects.filter(id=instance.id).update(
        provider=scw_catalog, status="terminated", terminated_at=timezone.now()
    )
    instance.refresh_from_db()
    with pytest.raises(ProviderError, match="has no machine"):
        instance_power(instance=instance, action="reboot")


def test_the_admin_reboot_action_sends_the_task_and_reports_what_it_cannot_do(
    owner_org: Organization,
    scw_catalog: Provider,
    fake_scw: FakeScaleway,
    staff: Any,
    client: Client,
    monkeypatch: pytest.MonkeyPatch,
    django_capture_on_commit_callbacks: Any,
) -> None:
    # given a machine on Scaleway and one on an on-premise provider
    cloud = provisioned(owner_org, scw_catalog)
    onprem = provisioned(owner_org, scw_catalog)
    Instance.objects.filter(id=onprem.id).update(
        provider=Provider.objects.create(name="lab", kind="onprem")
    )
    sent: list[dict[str, Any]] = []
    monkeypatch.setattr(instance_power_task, "delay", lambda **kw: sent.append(kw))
    client.force_login(staff)
    # when
    with django_capture_on_commit_callbacks(execute=True):
        response = client.post(
            "/admin/instances/instance/",
            {"action": "reboot_machine", "_selected_action": [str(cloud.id), str(onprem.id)]},
        )
    # then
    assert response.status_code == 302
    assert sent == [{"instance_id": str(cloud.id), "action": "reboot"}]
    texts = [str(m) for m in get_messages(response.wsgi_request)]
    assert f"{onprem.id}: power action reboot is not supported by onprem" in texts
    assert "Reboot sent for 1 instance(s); see the worker log." in texts
    Instance.objects.filter(id=onprem.id).update(provider=scw_catalog)
    terminate(cloud)
    terminate(onprem)
    assert fake_scw.leaks() == NOTHING

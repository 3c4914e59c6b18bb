"""The Scaleway adapter, through the real ``scaleway`` SDK, against the local fake API."""

from __future__ import annotations

import json
import uuid
from decimal import Decimal
from typing import Any

import pytest

from apps.instances.models import Provider
from apps.instances.providers import get_adapter
from apps.instances.providers.base import (
    AuthenticationFailed,
    MachineSpec,
    OutOfCapacity,
    QuotaExceeded,
    TransientProviderError,
)
from apps.instances.providers.credentials import provider_set_credentials
from apps.instances.providers.scaleway import products
from tests.providers.fake_scaleway import FakeScaleway

NOTHING = {"servers": [], "ips": [], "volumes": []}


def spec(instance_id: str | None = None, **overrides: Any) -> MachineSpec:
    values: dict[str, Any] = {
        "instance_id": instance_id or str(uuid.uuid4()),
        "instance_type": "L4-1-24G",
        "zone": "fr-par-2",
        "control_plane_url": "https://cp.example.com",
        "bootstrap_token": "ivb_token",
        "engine_port": 8000,
        "boot_volume_gb": 150,
        "user_data": "#cloud-config\n{}\n",
    }
    values.update(overrides)
    return MachineSpec(**values)


def test_it_lists_gpu_types_with_prices_and_availability_per_zone_across_pages(
    scw_provider: Provider, fake_scw: FakeScaleway, monkeypatch: pytest.MonkeyPatch
) -> None:
    # given small pages and an L40S in shortage in Amsterdam
    monkeypatch.setattr(products, "PAGE_SIZE", 3)
    fake_scw.availability[("nl-ams-1", "L40S-1-48G")] = "shortage"
    # when
    catalog = {t.code: t for t in get_adapter(scw_provider).list_instance_types()}
    # then every GPU type is there (not the CPU ones), with GPU facts and price
    assert set(catalog) == {
        "L4-1-24G",
        "L4-2-24G",
        "L40S-1-48G",
        "H100-1-80G",
        "H100-2-80G",
        "RENDER-S",
    }
    l4x2 = catalog["L4-2-24G"]
    assert (l4x2.gpu_model, l4x2.gpu_count, l4x2.vram_per_gpu_gb) == ("NVIDIA L4", 2, 24)
    assert l4x2.hourly_price == Decimal("1.5") and l4x2.currency == "EUR"
    assert catalog["L40S-1-48G"].availability == {"fr-par-2": "available", "nl-ams-1": "shortage"}
    assert fake_scw.count("GET", "products/servers$") >= 2 * 3  # paged, in both zones


def test_it_creates_a_tagged_server_with_a_sized_boot_volume_cloud_init_and_an_ip(
    scw_provider: Provider, fake_scw: FakeScaleway
) -> None:
    # given
    the_spec = spec(boot_volume_gb=150)
    # when
    machine = get_adapter(scw_provider).create_machine(the_spec)
    # then one running server carries our tags, a 150 GB block boot volume and a public IP
    assert machine.state == "running" and machine.public_ip
    assert machine.instance_id == the_spec.instance_id
    server = fake_scw.servers[machine.resource_id]
    assert f"inventiv-instance={the_spec.instance_id}" in server["tags"]
    assert "inventiv-managed=inventiv-test" in server["tags"]
    ((kind, volume_id),) = server["volume_refs"]
    assert kind == "sbs_volume"
    assert fake_scw.block_volumes[volume_id]["size"] == 150 * 1000**3
    # the volume and IP are tagged too, so that the sweeper can find them alone
    assert f"inventiv-instance={the_spec.instance_id}" in fake_scw.block_volumes[volume_id]["tags"]
    assert all(
        f"inventiv-instance={the_spec.instance_id}" in ip["tags"] for ip in fake_scw.ips.values()
    )
    # and the machine boots with our cloud-init and nothing else
    assert fake_scw.user_data[(machine.resource_id, "cloud-init")] == the_spec.user_data.encode()


def test_it_sends_no_provider_credential_to_the_machine(
    scw_provider: Provider, fake_scw: FakeScaleway
) -> None:
    # given / when
    machine = get_adapter(scw_provider).create_machine(spec())
    # then
    sent = fake_scw.user_data[(machine.resource_id, "cloud-init")].decode()
    assert fake_scw_secret() not in sent
    assert "SCW" not in sent


def fake_scw_secret() -> str:
    from tests.providers.fake_scaleway import SECRET_KEY

    return SECRET_KEY


def test_it_adopts_the_server_when_the_create_response_was_lost(
    scw_provider: Provider, fake_scw: FakeScaleway
) -> None:
    # given the create is applied but its response never arrives
    fake_scw.drop_next("POST", r"/servers$")
    the_spec = spec()
    adapter = get_adapter(scw_provider)
    with pytest.raises(TransientProviderError):
        adapter.create_machine(the_spec)
    assert len(fake_scw.servers) == 1
    # when the task retries
    machine = get_adapter(scw_provider).create_machine(the_spec)
    # then the same server is adopted and completed (user data, powered on): no duplicate
    assert len(fake_scw.servers) == 1 and len(fake_scw.ips) == 1
    assert machine.resource_id in fake_scw.servers
    assert machine.state == "running"
    assert (machine.resource_id, "cloud-init") in fake_scw.user_data
    assert fake_scw.count("POST", r"/servers$") == 1


def test_it_adopts_the_server_when_the_power_on_response_was_lost(
    scw_provider: Provider, fake_scw: FakeScaleway
) -> None:
    # given
    fake_scw.drop_next("POST", r"/action$")
    the_spec = spec()
    with pytest.raises(TransientProviderError):
        get_adapter(scw_provider).create_machine(the_spec)
    # when
    machine = get_adapter(scw_provider).create_machine(the_spec)
    # then
    assert list(fake_scw.servers) == [machine.resource_id]
    assert machine.state == "running"
    assert fake_scw.count("POST", r"/action$") == 1


def test_it_raises_quota_exceeded_and_leaves_nothing_behind(
    scw_provider: Provider, fake_scw: FakeScaleway
) -> None:
    # given a quota of zero H100
    fake_scw.quota["H100-1-80G"] = 0
    # when / then
    with pytest.raises(QuotaExceeded) as caught:
        get_adapter(scw_provider).create_machine(spec(instance_type="H100-1-80G"))
    assert "quota" in str(caught.value) and "instances_H100-1-80G" in str(caught.value)
    assert fake_scw.leaks() == NOTHING


def test_it_raises_out_of_capacity_at_power_on_and_deletes_what_it_created(
    scw_provider: Provider, fake_scw: FakeScaleway
) -> None:
    # given no L4 left in Paris: the server is created, its power-on refused
    fake_scw.stock[("fr-par-2", "L4-1-24G")] = 0
    # when / then
    with pytest.raises(OutOfCapacity):
        get_adapter(scw_provider).create_machine(spec())
    assert fake_scw.count("POST", r"/servers$") == 1
    assert fake_scw.leaks() == NOTHING


def test_it_reports_bad_credentials_as_authentication_failed_without_quoting_them(
    scw_provider: Provider, fake_scw: FakeScaleway
) -> None:
    # given a well-formed but wrong secret key
    wrong = "99999999-2222-4333-8444-555555555555"
    provider_set_credentials(
        provider=scw_provider,
        credentials={"access_key": "SCWABCDEFGHIJKLMNOPQ", "secret_key": wrong},
    )
    # when / then
    with pytest.raises(AuthenticationFailed) as caught:
        get_adapter(scw_provider).list_instance_types()
    assert wrong not in str(caught.value)


def test_it_rejects_malformed_credentials_without_quoting_them(
    scw_provider: Provider,
) -> None:
    provider_set_credentials(
        provider=scw_provider, credentials={"access_key": "nope", "secret_key": "s3cr3t-value"}
    )
    with pytest.raises(AuthenticationFailed) as caught:
        get_adapter(scw_provider).list_instance_types()
    assert "s3cr3t-value" not in str(caught.value) and "nope" not in str(caught.value)


def test_it_keeps_credentials_encrypted_at_rest(scw_provider: Provider) -> None:
    stored = Provider.objects.values_list("credentials_encrypted", flat=True).get(
        id=scw_provider.id
    )
    assert fake_scw_secret() not in stored
    with pytest.raises(json.JSONDecodeError):
        json.loads(stored)


def test_it_terminates_a_running_machine_and_leaves_no_volume_or_ip(
    scw_provider: Provider, fake_scw: FakeScaleway
) -> None:
    # given
    adapter = get_adapter(scw_provider)
    machine = adapter.create_machine(spec())
    # when
    adapter.terminate_machine(machine)
    # then the block volume and flexible IP that Scaleway keeps after "terminate" are gone too
    assert fake_scw.leaks() == NOTHING


def test_it_terminates_a_machine_still_booting_and_cleans_everything(
    scw_provider: Provider, fake_scw: FakeScaleway, settings: Any
) -> None:
    # given a machine that never reaches "running" (it would never register either)
    fake_scw.boot_polls = 10**6
    settings.PROVIDER_WAIT_RUNNING_S = 0.05
    adapter = get_adapter(scw_provider)
    machine = adapter.create_machine(spec())
    assert machine.state == "starting"
    # when the boot deadline passes and the orchestrator terminates it
    adapter.terminate_machine(adapter.find_machine(machine.instance_id or "") or machine)
    # then
    assert fake_scw.leaks() == NOTHING


def test_it_terminates_a_machine_created_but_never_powered_on(
    scw_provider: Provider, fake_scw: FakeScaleway
) -> None:
    # given the worker died right after create: a stopped server with its volume and IP
    fake_scw.fail_next("PATCH", r"/user_data/", 500, {"type": "internal", "message": "boom"})
    the_spec = spec()
    adapter = get_adapter(scw_provider)
    with pytest.raises(TransientProviderError):
        adapter.create_machine(the_spec)
    machine = adapter.find_machine(the_spec.instance_id)
    assert machine is not None and machine.state == "stopped"
    # when
    adapter.terminate_machine(machine)
    # then
    assert fake_scw.leaks() == NOTHING


def test_it_treats_terminating_a_machine_already_gone_as_success(
    scw_provider: Provider, fake_scw: FakeScaleway
) -> None:
    # given a terminate that deleted the server but died before the volume and IP
    adapter = get_adapter(scw_provider)
    machine = adapter.create_machine(spec())
    server_id = machine.resource_id
    with fake_scw.lock:
        fake_scw.servers[server_id]["state"] = "stopped"
        fake_scw._remove_server(server_id, terminate=False)
    assert fake_scw.leaks()["volumes"] and fake_scw.leaks()["ips"]
    # when terminate runs again
    adapter.terminate_machine(machine)
    adapter.terminate_machine(machine)
    # then
    assert fake_scw.leaks() == NOTHING


def test_it_lists_only_this_deployments_machines(
    scw_provider: Provider, fake_scw: FakeScaleway, settings: Any
) -> None:
    # given one machine of ours and one of another platform sharing the account
    adapter = get_adapter(scw_provider)
    ours = adapter.create_machine(spec())
    settings.DEPLOYMENT_NAME = "someone-else"
    get_adapter(scw_provider).create_machine(spec(zone="nl-ams-1"))
    settings.DEPLOYMENT_NAME = "inventiv-test"
    # when
    listed = get_adapter(scw_provider).list_machines()
    # then
    assert [m.resource_id for m in listed] == [ours.resource_id]

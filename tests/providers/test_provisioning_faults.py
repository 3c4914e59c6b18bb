"""Provisioning, termination and sweeping through the orchestrator's real steps, against the
fake Scaleway API and moto, with faults injected. Every test ends by checking what is left
at the provider: the goal is nothing."""

from __future__ import annotations

import uuid
from typing import Any

import pytest
from django.db import transaction

from apps.accounts.models import Organization
from apps.instances import orchestrator
from apps.instances.models import Instance, Provider, ProvisionAttempt, SweepRecord
from apps.instances.providers import get_adapter
from apps.instances.providers.base import MachineSpec
from apps.instances.providers.catalog import catalog_sync
from apps.instances.providers.sweeper import sweep_provider
from apps.instances.services import instance_create, instance_request_termination
from apps.models.models import LlmModel
from tests.providers.fake_scaleway import FakeScaleway

NOTHING = {"servers": [], "ips": [], "volumes": []}


def model_code(org: Organization, provider: Provider, **needs: Any) -> LlmModel:
    values: dict[str, Any] = {"gpu_count": 1, "vram_per_gpu_gb": 24}
    values.update(needs)
    return LlmModel.objects.create(
        organization=org,
        name=f"bot-{uuid.uuid4().hex[:6]}",
        engine="mock",
        model_id="meta-llama/Llama-3.1-8B-Instruct",
        provider=provider,
        status="deploying",
        **values,
    )


def new_instance(model: LlmModel, provider: Provider) -> Instance:
    with transaction.atomic():
        return instance_create(llm_model=model, provider=provider)


def terminate(instance: Instance) -> None:
    instance.refresh_from_db()
    with transaction.atomic():
        instance_request_termination(instance=instance, reason="test over")
    assert orchestrator.instance_terminate(instance_id=str(instance.id)) == "terminated"


@pytest.fixture
def scw_catalog(scw_provider: Provider) -> Provider:
    assert catalog_sync(provider_id=scw_provider.id).error == ""
    return scw_provider


def test_it_moves_to_the_next_offer_on_quota_and_stock_failures_and_records_why(
    owner_org: Organization, scw_catalog: Provider, fake_scw: FakeScaleway
) -> None:
    # given the cheapest 24 GB GPU (L4) is over quota everywhere and L40S is out of stock in
    # Paris, but in stock in Amsterdam
    fake_scw.quota["L4-1-24G"] = 0
    fake_scw.stock[("fr-par-2", "L40S-1-48G")] = 0
    instance = new_instance(model_code(owner_org, scw_catalog), scw_catalog)
    # when
    outcome = orchestrator.instance_provision(instance_id=str(instance.id))
    # then
    assert outcome.startswith("created")
    attempts = list(
        ProvisionAttempt.objects.filter(instance=instance).values_list(
            "instance_type_code", "zone", "outcome", "error_code"
        )
    )
    assert attempts == [
        ("L4-1-24G", "fr-par-2", "failed", "quota_exceeded"),
        ("L4-1-24G", "nl-ams-1", "failed", "quota_exceeded"),
        ("L40S-1-48G", "fr-par-2", "failed", "out_of_capacity"),
        ("L40S-1-48G", "nl-ams-1", "succeeded", ""),
    ]
    instance.refresh_from_db()
    assert instance.status == "booting" and instance.zone == "nl-ams-1"
    # and only the machine that succeeded exists
    assert list(fake_scw.servers) == [instance.provider_resource_id]
    assert len(fake_scw.ips) == 1 and len(fake_scw.block_volumes) == 1
    terminate(instance)
    assert fake_scw.leaks() == NOTHING


def test_it_adopts_a_machine_whose_worker_died_before_recording_it(
    owner_org: Organization, scw_catalog: Provider, fake_scw: FakeScaleway
) -> None:
    # given a worker created the machine for this instance and was killed before recording it
    instance = new_instance(model_code(owner_org, scw_catalog), scw_catalog)
    orphan = get_adapter(scw_catalog).create_machine(
        MachineSpec(
            instance_id=str(instance.id),
            instance_type="L4-1-24G",
            zone="fr-par-2",
            control_plane_url="http://cp",
            bootstrap_token="ivb_x",
            engine_port=8000,
        )
    )
    # when the sweeper runs, it keeps it as adoptable
    swept = sweep_provider(provider_id=scw_catalog.id)
    assert (swept.kept, swept.adoptable, swept.removed) == (1, 1, 0)
    # and when the provision command is re-sent, the machine is adopted, not duplicated
    assert (
        orchestrator.instance_provision(instance_id=str(instance.id))
        == f"created {orphan.resource_id}"
    )
    instance.refresh_from_db()
    assert instance.provider_resource_id == orphan.resource_id
    assert list(fake_scw.servers) == [orphan.resource_id]
    terminate(instance)
    assert fake_scw.leaks() == NOTHING


def test_it_sweeps_an_orphan_only_after_the_grace_period(
    scw_provider: Provider, fake_scw: FakeScaleway, settings: Any
) -> None:
    # given a tagged machine no instance owns (created, then its instance vanished)
    get_adapter(scw_provider).create_machine(
        MachineSpec(
            instance_id=str(uuid.uuid4()),
            instance_type="L4-1-24G",
            zone="fr-par-2",
            control_plane_url="http://cp",
            bootstrap_token="ivb_x",
            engine_port=8000,
        )
    )
    # when the sweeper runs inside the grace period, it only notes it
    settings.SWEEP_GRACE_S = 900
    first = sweep_provider(provider_id=scw_provider.id)
    assert (first.deferred, first.removed) == (1, 0)
    assert len(fake_scw.servers) == 1
    # and when the grace period is over, it removes the machine and all it held
    settings.SWEEP_GRACE_S = 0
    second = sweep_provider(provider_id=scw_provider.id)
    assert second.removed == 1
    assert fake_scw.leaks() == NOTHING
    assert list(SweepRecord.objects.values_list("action", flat=True)) == ["deferred", "removed"]


def test_it_sweeps_a_volume_and_ip_left_by_a_terminate_that_crashed_midway(
    owner_org: Organization, scw_catalog: Provider, fake_scw: FakeScaleway, settings: Any
) -> None:
    # given an instance terminated while the provider deleted only its server (a crash before
    # the volume and IP were released)
    instance = new_instance(model_code(owner_org, scw_catalog), scw_catalog)
    orchestrator.instance_provision(instance_id=str(instance.id))
    instance.refresh_from_db()
    with fake_scw.lock:
        fake_scw.servers[instance.provider_resource_id]["state"] = "stopped"
        fake_scw._remove_server(instance.provider_resource_id, terminate=True)
    terminate(instance)  # finds no machine: marks terminated
    assert fake_scw.leaks()["volumes"] and fake_scw.leaks()["ips"]
    # when the sweeper runs after the grace period
    settings.SWEEP_GRACE_S = 0
    result = sweep_provider(provider_id=scw_catalog.id)
    # then
    assert result.removed == 2
    assert fake_scw.leaks() == NOTHING


def test_it_never_sweeps_the_machine_of_a_live_instance(
    owner_org: Organization, scw_catalog: Provider, fake_scw: FakeScaleway, settings: Any
) -> None:
    # given
    settings.SWEEP_GRACE_S = 0
    instance = new_instance(model_code(owner_org, scw_catalog), scw_catalog)
    orchestrator.instance_provision(instance_id=str(instance.id))
    # when
    result = sweep_provider(provider_id=scw_catalog.id)
    # then
    assert (result.kept, result.removed) == (1, 0)
    assert len(fake_scw.servers) == 1
    terminate(instance)
    assert fake_scw.leaks() == NOTHING


def test_it_fails_the_instance_with_every_reason_when_no_offer_works_and_leaves_nothing(
    owner_org: Organization, scw_catalog: Provider, fake_scw: FakeScaleway
) -> None:
    # given no 80 GB GPU anywhere: quota on one size, no stock of the other
    fake_scw.quota["H100-1-80G"] = 0
    for zone in fake_scw.zones:
        fake_scw.stock[(zone, "H100-2-80G")] = 0
    instance = new_instance(model_code(owner_org, scw_catalog, vram_per_gpu_gb=80), scw_catalog)
    # when
    outcome = orchestrator.instance_provision(instance_id=str(instance.id))
    # then
    assert outcome.startswith("failed")
    instance.refresh_from_db()
    assert instance.status == "terminating"
    assert "quota_exceeded" in instance.failure_reason
    assert "out_of_capacity" in instance.failure_reason
    assert orchestrator.instance_terminate(instance_id=str(instance.id)) == "terminated"
    assert fake_scw.leaks() == NOTHING


def test_it_provisions_on_aws_up_to_booting_and_terminates_without_leaving_volumes(
    owner_org: Organization, aws_provider: Provider
) -> None:
    import boto3

    # given
    assert catalog_sync(provider_id=aws_provider.id).error == ""
    instance = new_instance(model_code(owner_org, aws_provider, vram_per_gpu_gb=20), aws_provider)
    # when
    assert orchestrator.instance_provision(instance_id=str(instance.id)).startswith("created")
    instance.refresh_from_db()
    assert instance.status == "booting"
    terminate(instance)
    # then
    ec2 = boto3.client("ec2", region_name="eu-west-3")
    states = [
        i["State"]["Name"] for r in ec2.describe_instances()["Reservations"] for i in r["Instances"]
    ]
    assert states == ["terminated"]
    assert ec2.describe_volumes()["Volumes"] == []

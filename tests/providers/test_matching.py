"""Sizing, matching and the offers API; cloud-init content."""

from __future__ import annotations

import json
from decimal import Decimal
from typing import Any

from rest_framework.test import APIClient

from apps.accounts.models import Organization
from apps.instances.agents.bootstrap import render_cloud_init, render_join_command
from apps.instances.models import InstanceType, Provider
from apps.instances.providers.catalog import catalog_sync
from apps.instances.providers.matching import offers_for_model
from apps.instances.providers.sizing import estimate_vram_gb
from apps.models.models import LlmModel
from tests.providers.fake_scaleway import FakeScaleway


def model_code(org: Organization, **fields: Any) -> LlmModel:
    values: dict[str, Any] = {"gpu_count": 1, "engine": "mock", "status": "draft"}
    values.update(fields)
    return LlmModel.objects.create(organization=org, name="sales-bot", model_id="m", **values)


def test_it_estimates_vram_from_parameters_dtype_and_context() -> None:
    # 8B in 16 bits: ~16 GB of weights, plus cache and overhead, fits a 24 GB GPU
    assert 20 <= estimate_vram_gb(parameter_count_b=8, dtype="bfloat16") <= 24
    # 70B in 16 bits needs well over one 80 GB GPU; in int4 it fits one
    assert estimate_vram_gb(parameter_count_b=70, dtype="bfloat16") > 80
    assert estimate_vram_gb(parameter_count_b=70, quantization="awq") <= 80
    # a longer context needs more
    assert estimate_vram_gb(parameter_count_b=8, max_model_len=131072) > estimate_vram_gb(
        parameter_count_b=8
    )


def test_it_lists_compatible_offers_cheapest_available_first(
    owner_org: Organization, scw_provider: Provider, fake_scw: FakeScaleway
) -> None:
    # given a synced catalog with L4 in shortage in Amsterdam
    fake_scw.availability[("nl-ams-1", "L4-1-24G")] = "shortage"
    catalog_sync(provider_id=scw_provider.id)
    model = model_code(owner_org, vram_per_gpu_gb=24)
    # when
    offers = offers_for_model(model)
    # then every offer has ≥24 GB per GPU, available before shortage, cheapest first
    assert [(o.instance_type_code, o.zone) for o in offers[:3]] == [
        ("L4-1-24G", "fr-par-2"),
        ("L40S-1-48G", "fr-par-2"),
        ("L40S-1-48G", "nl-ams-1"),
    ]
    assert offers[-1].availability == "shortage"
    assert all(o.vram_per_gpu_gb >= 24 for o in offers)
    assert "RENDER-S" not in {o.instance_type_code for o in offers}


def test_it_matches_an_estimate_over_several_gpus(
    owner_org: Organization, scw_provider: Provider
) -> None:
    # given a 70B model in fp8 (about 90 GB) and the catalog
    catalog_sync(provider_id=scw_provider.id)
    model = model_code(owner_org, parameter_count_b=Decimal("70"), quantization="fp8")
    # when
    codes = {o.instance_type_code for o in offers_for_model(model)}
    # then only 2×80 GB fits
    assert codes == {"H100-2-80G"}


def test_it_narrows_offers_to_an_explicit_type_and_zone(
    owner_org: Organization, scw_provider: Provider
) -> None:
    catalog_sync(provider_id=scw_provider.id)
    h100 = InstanceType.objects.get(provider=scw_provider, code="H100-1-80G")
    model = model_code(owner_org, vram_per_gpu_gb=24)
    offers = offers_for_model(model, instance_type=h100, zone="nl-ams-1")
    assert [(o.instance_type_code, o.zone) for o in offers] == [("H100-1-80G", "nl-ams-1")]


def test_it_deactivates_types_no_longer_sold_and_keeps_them(
    scw_provider: Provider,
) -> None:
    InstanceType.objects.create(provider=scw_provider, code="GPU-OLD", gpu_count=1)
    result = catalog_sync(provider_id=scw_provider.id)
    assert (result.created, result.deactivated) == (6, 1)
    assert not InstanceType.objects.get(code="GPU-OLD").active
    assert catalog_sync(provider_id=scw_provider.id).updated == 6


def test_it_serves_offers_for_a_model_code_and_hides_others_model_codes(
    api: APIClient,
    stranger_api: APIClient,
    owner_org: Organization,
    scw_provider: Provider,
) -> None:
    # given
    catalog_sync(provider_id=scw_provider.id)
    model = model_code(owner_org, vram_per_gpu_gb=48)
    # when
    mine = api.get(f"/api/v1/models/{model.id}/offers/?zone=fr-par-2")
    theirs = stranger_api.get(f"/api/v1/models/{model.id}/offers/")
    # then
    assert mine.status_code == 200
    body = mine.json()
    assert body["needs"].startswith("1× ≥48 GB")
    assert [o["instance_type_code"] for o in body["offers"]] == [
        "L40S-1-48G",
        "H100-1-80G",
        "H100-2-80G",
    ]
    assert body["offers"][0]["hourly_price"] == "1.4000"
    assert theirs.status_code == 404 and theirs.json()["error"]["code"] == "not_found"


def test_it_boots_the_agent_with_only_its_one_time_token() -> None:
    # when
    text = render_cloud_init(control_plane_url="https://cp.example.com", bootstrap_token="ivb_1")
    # then the token is in a root-only env file read by a systemd unit, not on a command line
    assert text.startswith("#cloud-config\n")
    config = json.loads(text.split("\n", 1)[1])
    env_file, unit = config["write_files"]
    assert env_file["permissions"] == "0600"
    assert "INVENTIV_BOOTSTRAP_TOKEN=ivb_1" in env_file["content"]
    assert (
        "ExecStart=/opt/inventiv/venv/bin/python -m agent --state-dir /var/lib/inventiv-agent\n"
        in unit["content"]
    )
    assert "ivb_1" not in json.dumps(config["runcmd"])


def test_it_renders_a_join_command_that_keeps_the_token_off_the_command_arguments() -> None:
    command = render_join_command(join_token="ivj_1", control_plane_url="https://cp")
    assert "INVENTIV_JOIN_TOKEN=ivj_1" in command
    assert "-m agent.host --control-plane https://cp" in command
    assert "--join-token" not in command

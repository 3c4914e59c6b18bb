"""The AWS adapter with boto3 against moto; capacity and quota errors injected with botocore's
Stubber (or an event hook where moto must still apply the rest)."""

from __future__ import annotations

import base64
import uuid
from decimal import Decimal
from typing import Any

import boto3
import pytest
from botocore.exceptions import ReadTimeoutError
from botocore.stub import Stubber

from apps.instances.models import Provider
from apps.instances.providers import get_adapter
from apps.instances.providers.aws import AwsAdapter
from apps.instances.providers.base import (
    MachineSpec,
    OutOfCapacity,
    QuotaExceeded,
    TransientProviderError,
)


def spec(**overrides: Any) -> MachineSpec:
    values: dict[str, Any] = {
        "instance_id": str(uuid.uuid4()),
        "instance_type": "g5.xlarge",
        "zone": "eu-west-3a",
        "control_plane_url": "https://cp.example.com",
        "bootstrap_token": "ivb_token",
        "engine_port": 8000,
        "boot_volume_gb": 120,
        "user_data": "#cloud-config\n{}\n",
    }
    values.update(overrides)
    return MachineSpec(**values)


def live_instances() -> list[dict[str, Any]]:
    ec2 = boto3.client("ec2", region_name="eu-west-3")
    out = []
    for reservation in ec2.describe_instances()["Reservations"]:
        out += [i for i in reservation["Instances"] if i["State"]["Name"] != "terminated"]
    return out


def volumes() -> list[dict[str, Any]]:
    return boto3.client("ec2", region_name="eu-west-3").describe_volumes()["Volumes"]


def capture(adapter: AwsAdapter, operation: str) -> list[dict[str, Any]]:
    seen: list[dict[str, Any]] = []
    adapter.ec2().meta.events.register(
        f"provide-client-params.ec2.{operation}", lambda params, **kw: seen.append(dict(params))
    )
    return seen


def test_it_lists_gpu_types_offered_in_the_configured_zones_with_prices(
    aws_provider: Provider,
) -> None:
    # when
    catalog = {t.code: t for t in get_adapter(aws_provider).list_instance_types()}
    # then
    g5 = catalog["g5.xlarge"]
    assert (g5.gpu_model, g5.gpu_count, g5.vcpus) == ("NVIDIA A10G", 1, 4)
    assert g5.vram_per_gpu_gb == 22
    assert g5.availability == {"eu-west-3a": "available", "eu-west-3b": "available"}
    assert g5.hourly_price == Decimal("1.2") and g5.currency == "USD"  # the configured price
    assert catalog["g4dn.xlarge"].hourly_price == Decimal("0.526")  # the fallback table
    assert "m5.large" not in catalog  # no GPU


def test_it_launches_with_tags_imdsv2_an_idempotency_token_and_volumes_deleted_on_termination(
    aws_provider: Provider,
) -> None:
    # given
    adapter = get_adapter(aws_provider)
    assert isinstance(adapter, AwsAdapter)
    sent = capture(adapter, "RunInstances")
    the_spec = spec()
    # when
    machine = adapter.create_machine(the_spec)
    # then
    assert machine.state == "running" and machine.instance_id == the_spec.instance_id
    (params,) = sent
    assert params["MetadataOptions"]["HttpTokens"] == "required"
    assert params["ClientToken"].startswith(the_spec.instance_id)
    (mapping,) = params["BlockDeviceMappings"]
    assert mapping["Ebs"]["DeleteOnTermination"] is True and mapping["Ebs"]["VolumeSize"] == 120
    (instance,) = live_instances()
    tags = {t["Key"]: t["Value"] for t in instance["Tags"]}
    assert tags["inventiv-instance"] == the_spec.instance_id
    assert tags["inventiv-managed"] == "inventiv-test"
    user_data = boto3.client("ec2", region_name="eu-west-3").describe_instance_attribute(
        InstanceId=machine.resource_id, Attribute="userData"
    )["UserData"]["Value"]
    assert base64.b64decode(user_data).decode() == the_spec.user_data


def test_it_adopts_the_instance_when_the_launch_response_was_lost(aws_provider: Provider) -> None:
    # given moto launches the instance but the answer is lost on the way back
    adapter = get_adapter(aws_provider)
    assert isinstance(adapter, AwsAdapter)

    def lose(**kwargs: Any) -> None:
        raise ReadTimeoutError(endpoint_url="https://ec2.eu-west-3.amazonaws.com")

    adapter.ec2().meta.events.register_first("after-call.ec2.RunInstances", lose)
    the_spec = spec()
    with pytest.raises(TransientProviderError):
        adapter.create_machine(the_spec)
    assert len(live_instances()) == 1
    # when the task retries (a new adapter, as in a new task run)
    machine = get_adapter(aws_provider).create_machine(the_spec)
    # then it is the same instance: no duplicate
    assert [i["InstanceId"] for i in live_instances()] == [machine.resource_id]


@pytest.mark.parametrize(
    ("code", "error"),
    [
        ("VcpuLimitExceeded", QuotaExceeded),
        ("InstanceLimitExceeded", QuotaExceeded),
        ("InsufficientInstanceCapacity", OutOfCapacity),
    ],
)
def test_it_maps_launch_errors_to_typed_errors(
    aws_provider: Provider, code: str, error: type[Exception]
) -> None:
    # given every EC2 call answered by a Stubber: nothing found, then the launch refused (an
    # operator-named security group: no group of ours to find or make)
    aws_provider.config["security_group_ids"] = ["sg-0123456789abcdef0"]
    adapter = get_adapter(aws_provider)
    assert isinstance(adapter, AwsAdapter)
    with Stubber(adapter.ec2()) as stub:
        stub.add_response("describe_instances", {"Reservations": []})
        stub.add_client_error(
            "run_instances",
            service_error_code=code,
            service_message=f"{code} for g5.xlarge",
            http_status_code=400 if code != "InsufficientInstanceCapacity" else 500,
        )
        # when / then
        with pytest.raises(error) as caught:
            adapter.create_machine(spec())
        stub.assert_no_pending_responses()
    assert code in str(caught.value)


def test_it_falls_back_to_on_demand_when_spot_has_no_capacity(aws_provider: Provider) -> None:
    # given spot with on-demand fallback, and no spot capacity
    aws_provider.config["market"] = "spot-fallback"
    adapter = get_adapter(aws_provider)
    assert isinstance(adapter, AwsAdapter)
    sent = capture(adapter, "RunInstances")

    def no_spot(params: dict[str, Any], **kwargs: Any) -> Any:
        # ``params`` is the serialized query: {"body": {"InstanceMarketOptions.MarketType": ..}}
        if params["body"].get("InstanceMarketOptions.MarketType") == "spot":
            body = {"Error": {"Code": "InsufficientInstanceCapacity", "Message": "no spot"}}
            return (type("R", (), {"status_code": 500})(), body)
        return None

    adapter.ec2().meta.events.register("before-call.ec2.RunInstances", no_spot)
    # when
    machine = adapter.create_machine(spec())
    # then
    assert [p.get("InstanceMarketOptions", {}).get("MarketType") for p in sent] == ["spot", None]
    assert sent[0]["ClientToken"] != sent[1]["ClientToken"]
    assert [i["InstanceId"] for i in live_instances()] == [machine.resource_id]


def test_it_terminates_and_leaves_no_volume_behind(aws_provider: Provider) -> None:
    # given
    adapter = get_adapter(aws_provider)
    machine = adapter.create_machine(spec())
    assert volumes()
    # when
    adapter.terminate_machine(machine)
    adapter.terminate_machine(machine)  # idempotent
    # then
    assert live_instances() == []
    assert volumes() == []


def test_it_terminates_a_machine_that_is_still_booting(
    aws_provider: Provider, settings: Any
) -> None:
    # given a machine returned before it was running
    settings.PROVIDER_WAIT_RUNNING_S = 0
    adapter = get_adapter(aws_provider)
    machine = adapter.create_machine(spec())
    # when
    adapter.terminate_machine(machine)
    # then
    assert live_instances() == [] and volumes() == []


def test_it_sweeps_a_detached_volume_of_a_gone_instance_but_not_of_a_live_one(
    aws_provider: Provider,
) -> None:
    # given two detached volumes of ours, one for a gone instance, one for a live one
    ec2 = boto3.client("ec2", region_name="eu-west-3")

    def volume(owner: str) -> str:
        return str(
            ec2.create_volume(
                AvailabilityZone="eu-west-3a",
                Size=10,
                TagSpecifications=[
                    {
                        "ResourceType": "volume",
                        "Tags": [
                            {"Key": "inventiv-instance", "Value": owner},
                            {"Key": "inventiv-managed", "Value": "inventiv-test"},
                        ],
                    }
                ],
            )["VolumeId"]
        )

    gone, live = volume("gone"), volume("live")
    from datetime import timedelta

    # when
    removed = get_adapter(aws_provider).sweep_orphan_resources(
        owner_is_gone=lambda owner: owner == "gone", older_than=timedelta(0)
    )
    # then
    assert removed == [("volume", gone, "gone")]
    assert [v["VolumeId"] for v in volumes()] == [live]

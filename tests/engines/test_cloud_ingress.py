"""Cloud machines open only the instance port (the agent's sealed front), to the operator's
CIDRs: the Scaleway adapter against the local fake API, the AWS adapter against moto."""

from __future__ import annotations

import uuid
from typing import Any

import boto3
import pytest

from apps.instances.models import Provider
from apps.instances.providers import get_adapter
from apps.instances.providers.base import MachineSpec
from tests.providers.fake_scaleway import FakeScaleway

pytestmark = pytest.mark.django_db


@pytest.fixture(autouse=True)
def _fast_polling(settings: Any) -> None:
    """As tests/providers does: poll the fakes quickly, our deployment's tag."""
    settings.PROVIDER_POLL_INTERVAL_S = 0.01
    settings.PROVIDER_WAIT_RUNNING_S = 5
    settings.PROVIDER_CALL_TIMEOUT_S = 5
    settings.DEPLOYMENT_NAME = "inventiv-test"


def _spec(instance_type: str, zone: str, port: int = 8000) -> MachineSpec:
    return MachineSpec(
        instance_id=str(uuid.uuid4()),
        instance_type=instance_type,
        zone=zone,
        control_plane_url="https://cp.example.com",
        bootstrap_token="ivb_token",
        engine_port=port,
        user_data="#cloud-config\n{}\n",
    )


def test_scaleway_servers_get_a_group_that_lets_in_only_the_instance_port_from_the_cidrs(
    scw_provider: Provider, fake_scw: FakeScaleway, settings: Any
) -> None:
    settings.AGENT_INGRESS_CIDRS = ["203.0.113.0/24", "2001:db8::/32"]
    adapter = get_adapter(scw_provider)
    # When two machines are created in a zone
    first = adapter.create_machine(_spec("L4-1-24G", "fr-par-2"))
    second = adapter.create_machine(_spec("L4-1-24G", "fr-par-2"))
    # Then both are in one group of ours: inbound dropped but TCP 8000 from the two CIDRs
    groups = list(fake_scw.security_groups.values())
    assert len(groups) == 1
    group = groups[0]
    assert fake_scw.servers[first.resource_id]["security_group"] == group["id"]
    assert fake_scw.servers[second.resource_id]["security_group"] == group["id"]
    assert "inventiv-managed=inventiv-test" in group["tags"]
    assert (group["inbound_default_policy"], group["outbound_default_policy"]) == ("drop", "accept")
    assert group["stateful"]
    rules = {
        (r["direction"], r["action"], r["protocol"], r["ip_range"], r["dest_port_from"],
         r["dest_port_to"])
        for r in group["rules"]
    }  # fmt: skip
    assert rules == {
        ("inbound", "accept", "TCP", "203.0.113.0/24", 8000, 8000),
        ("inbound", "accept", "TCP", "2001:db8::/32", 8000, 8000),
    }
    # When the operator narrows the CIDRs, the next machine's create re-sets the rules
    settings.AGENT_INGRESS_CIDRS = ["198.51.100.7/32"]
    adapter.create_machine(_spec("L4-1-24G", "fr-par-2"))
    assert [r["ip_range"] for r in group["rules"]] == ["198.51.100.7/32"]
    # And another zone gets its own group
    adapter.create_machine(_spec("L4-1-24G", "nl-ams-1"))
    assert len(fake_scw.security_groups) == 2


def test_scaleway_keeps_a_group_the_operator_named(
    scw_provider: Provider, fake_scw: FakeScaleway
) -> None:
    scw_provider.config = {**scw_provider.config, "security_group": "sg-operator"}
    scw_provider.save()
    machine = get_adapter(scw_provider).create_machine(_spec("L4-1-24G", "fr-par-2"))
    assert fake_scw.servers[machine.resource_id]["security_group"] == "sg-operator"
    assert fake_scw.security_groups == {}


def _ingress(group_id: str) -> list[dict[str, Any]]:
    ec2 = boto3.client("ec2", region_name="eu-west-3")
    group = ec2.describe_security_groups(GroupIds=[group_id])["SecurityGroups"][0]
    return list(group["IpPermissions"])


def test_aws_instances_get_a_group_that_lets_in_only_the_instance_port_from_the_cidrs(
    aws_provider: Provider, settings: Any
) -> None:
    settings.AGENT_INGRESS_CIDRS = ["203.0.113.0/24", "2001:db8::/32"]
    adapter = get_adapter(aws_provider)
    machine = adapter.create_machine(_spec("g5.xlarge", "eu-west-3a", port=8443))
    ec2 = boto3.client("ec2", region_name="eu-west-3")
    reservation = ec2.describe_instances(InstanceIds=[machine.resource_id])["Reservations"][0]
    (group,) = reservation["Instances"][0]["SecurityGroups"]
    assert group["GroupName"] == "inventiv-inventiv-test-agents-8443"
    (rule,) = _ingress(group["GroupId"])
    assert (rule["IpProtocol"], rule["FromPort"], rule["ToPort"]) == ("tcp", 8443, 8443)
    assert [r["CidrIp"] for r in rule["IpRanges"]] == ["203.0.113.0/24"]
    assert [r["CidrIpv6"] for r in rule["Ipv6Ranges"]] == ["2001:db8::/32"]
    # When someone opened SSH by hand and the CIDRs changed, the next create puts it right
    ec2.authorize_security_group_ingress(
        GroupId=group["GroupId"],
        IpPermissions=[
            {
                "IpProtocol": "tcp",
                "FromPort": 22,
                "ToPort": 22,
                "IpRanges": [{"CidrIp": "0.0.0.0/0"}],
            }
        ],
    )
    settings.AGENT_INGRESS_CIDRS = ["198.51.100.7/32"]
    second = adapter.create_machine(_spec("g5.xlarge", "eu-west-3a", port=8443))
    reservation = ec2.describe_instances(InstanceIds=[second.resource_id])["Reservations"][0]
    assert reservation["Instances"][0]["SecurityGroups"][0]["GroupId"] == group["GroupId"]
    (rule,) = _ingress(group["GroupId"])
    assert (rule["FromPort"], [r["CidrIp"] for r in rule["IpRanges"]]) == (
        8443,
        ["198.51.100.7/32"],
    )
    assert not rule.get("Ipv6Ranges")

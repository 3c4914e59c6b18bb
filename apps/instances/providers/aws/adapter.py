"""AWS EC2 GPU instances, through boto3.

Provider settings (``Provider.config``): ``region`` (required); ``zones`` (availability zones
to use; default: every zone of the region offering the type); ``ami`` (an image id) or
``ami_ssm_parameter`` (default: the Deep Learning Base OSS Nvidia Driver GPU AMI, Ubuntu 22.04,
resolved per region through SSM); ``subnets`` (``{"eu-west-3a": "subnet-..."}``, optional);
``security_group_ids`` (optional: the operator's own, used as is; else ours, see
``_security_group_ids``); ``instance_profile`` (optional name: never needed by the
agent); ``market``: ``on-demand`` (default), ``spot`` or ``spot-fallback`` (spot first, then
on-demand when spot has no capacity); ``root_device_name`` (default ``/dev/sda1``);
``prices`` (``{"g5.xlarge": "1.006"}``, overrides for the catalog). Credentials:
``access_key_id`` and ``secret_access_key``, or none to use the worker's own role.

Guarantees: ``run_instances`` carries an idempotency ``ClientToken`` derived from our instance
id, zone, type and market (a retried call after a lost response returns the same instance),
our tags on the instance, its volumes and network interfaces, IMDSv2 required, an encrypted
root volume deleted on termination, and ``shutdown`` meaning terminate. Before creating, we
look for an instance carrying our tag and adopt it.

Security group: unless the provider names some, instances get the platform's own for their
VPC (the zone's subnet's, else the default VPC) and instance port, tagged ``inventiv-managed``:
its only inbound rule is TCP on that port (the agent's sealed front) from
``INVENTIV_AGENT_INGRESS_CIDRS`` (IPv4 and IPv6 ranges), outbound as AWS creates it (open).
Other inbound rules found on it are revoked on every create, so a changed setting reaches it
with the next machine.

Calls go through ``transport`` (timeouts, retries, typed errors from ``errors``); prices come
from ``pricing``.
"""

from __future__ import annotations

import contextlib
import hashlib
import logging
from datetime import timedelta
from typing import Any, ClassVar

from django.conf import settings
from django.utils import timezone

from apps.instances.providers.aws.pricing import hourly_price
from apps.instances.providers.aws.transport import AwsClients, call, pages
from apps.instances.providers.base import (
    INSTANCE_TAG,
    MANAGED_TAG,
    InstanceTypeInfo,
    Machine,
    MachineNotFound,
    MachineSpec,
    OutOfCapacity,
    PowerAction,
    ProviderAdapter,
    ProviderError,
    TransientProviderError,
)
from apps.instances.providers.common import managed_value, our_tags, poll_until

logger = logging.getLogger(__name__)

DEFAULT_AMI_PARAMETER = (
    "/aws/service/deeplearning/ami/x86_64/base-oss-nvidia-driver-gpu-ubuntu-22.04/latest/ami-id"
)
LIVE_STATES = ["pending", "running", "stopping", "stopped"]


def _tag_dict(tags: list[dict[str, str]] | None) -> dict[str, str]:
    return {t["Key"]: t["Value"] for t in tags or []}


class AwsAdapter(ProviderAdapter):
    kind: ClassVar[str] = "aws"

    def __init__(self, provider: Any) -> None:
        super().__init__(provider)
        config = provider.config or {}
        self.region: str = str(config.get("region") or "")
        self.zones: list[str] = list(config.get("zones") or [])
        self.ami: str = str(config.get("ami") or "")
        self.ami_parameter: str = str(config.get("ami_ssm_parameter") or DEFAULT_AMI_PARAMETER)
        self.subnets: dict[str, str] = dict(config.get("subnets") or {})
        self.security_group_ids: list[str] = list(config.get("security_group_ids") or [])
        self.instance_profile: str = str(config.get("instance_profile") or "")
        self.market: str = str(config.get("market") or "on-demand")
        self.root_device: str = str(config.get("root_device_name") or "/dev/sda1")
        self.prices: dict[str, str] = {k: str(v) for k, v in (config.get("prices") or {}).items()}
        self._clients = AwsClients(provider, region=self.region)

    # --- clients ------------------------------------------------------------------------------

    def _client(self, service: str, region: str | None = None) -> Any:
        return self._clients.client(service, region)

    def ec2(self) -> Any:
        return self._client("ec2")

    # --- catalog ------------------------------------------------------------------------------

    def list_instance_types(self) -> list[InstanceTypeInfo]:
        ec2 = self.ec2()
        offered: dict[str, set[str]] = {}
        for page in pages(
            ec2, "describe_instance_type_offerings", LocationType="availability-zone"
        ):
            for item in page.get("InstanceTypeOfferings", []):
                zone = item["Location"]
                if not self.zones or zone in self.zones:
                    offered.setdefault(item["InstanceType"], set()).add(zone)
        infos: list[InstanceTypeInfo] = []
        for page in pages(ec2, "describe_instance_types"):
            for item in page.get("InstanceTypes", []):
                gpus = (item.get("GpuInfo") or {}).get("Gpus") or []
                code = item["InstanceType"]
                if not gpus or code not in offered:
                    continue
                gpu = gpus[0]
                count = sum(int(g.get("Count", 0)) for g in gpus)
                infos.append(
                    InstanceTypeInfo(
                        code=code,
                        gpu_model=f"{gpu.get('Manufacturer', '')} {gpu.get('Name', '')}".strip(),
                        gpu_count=count,
                        vram_per_gpu_gb=round(
                            int((gpu.get("MemoryInfo") or {}).get("SizeInMiB", 0)) / 1024
                        ),
                        vcpus=int((item.get("VCpuInfo") or {}).get("DefaultVCpus", 0)),
                        ram_gb=round(
                            int((item.get("MemoryInfo") or {}).get("SizeInMiB", 0)) / 1024
                        ),
                        hourly_price=hourly_price(self._clients, code, overrides=self.prices),
                        currency="USD",
                        availability={zone: "available" for zone in sorted(offered[code])},
                    )
                )
        return infos

    # --- lookups ------------------------------------------------------------------------------

    def _machine(self, item: dict[str, Any]) -> Machine:
        tags = _tag_dict(item.get("Tags"))
        volumes = [
            m["Ebs"]["VolumeId"] for m in item.get("BlockDeviceMappings", []) if m.get("Ebs")
        ]
        return Machine(
            resource_id=item["InstanceId"],
            instance_id=tags.get(INSTANCE_TAG),
            state=str(item.get("State", {}).get("Name", "")),
            zone=str(item.get("Placement", {}).get("AvailabilityZone", "")),
            public_ip=item.get("PublicIpAddress"),
            private_ip=item.get("PrivateIpAddress"),
            created_at=item.get("LaunchTime"),
            attached={"volumes": volumes},
        )

    def _describe(self, filters: list[dict[str, Any]]) -> list[dict[str, Any]]:
        out: list[dict[str, Any]] = []
        for page in pages(self.ec2(), "describe_instances", Filters=filters):
            for reservation in page.get("Reservations", []):
                out.extend(reservation.get("Instances", []))
        return out

    def find_machine(self, instance_id: str) -> Machine | None:
        found = self._describe(
            [
                {"Name": f"tag:{INSTANCE_TAG}", "Values": [instance_id]},
                {"Name": "instance-state-name", "Values": LIVE_STATES},
            ]
        )
        if not found:
            return None
        found.sort(key=lambda item: item.get("LaunchTime") or timezone.now())
        return self._machine(found[0])

    def list_machines(self) -> list[Machine]:
        return [
            self._machine(item)
            for item in self._describe(
                [
                    {"Name": f"tag:{MANAGED_TAG}", "Values": [managed_value()]},
                    {"Name": "instance-state-name", "Values": LIVE_STATES},
                ]
            )
        ]

    def get_machine(self, resource_id: str) -> Machine:
        """The EC2 instance with this id; MachineNotFound when unknown or terminated."""
        response = call(self.ec2().describe_instances, InstanceIds=[resource_id])
        items = [i for r in response.get("Reservations", []) for i in r.get("Instances", [])]
        if not items or items[0].get("State", {}).get("Name") in ("terminated", "shutting-down"):
            state = items[0]["State"]["Name"] if items else "unknown"
            raise MachineNotFound(f"AWS instance {resource_id} is {state}")
        return self._machine(items[0])

    # --- power --------------------------------------------------------------------------------

    def power(self, machine: Machine, action: PowerAction) -> Machine:
        """``start_instances`` / ``stop_instances`` / ``reboot_instances``, then wait
        (``PROVIDER_WAIT_RUNNING_S``) for ``running`` / ``stopped`` / ``running``. Spot instances
        cannot be stopped: EC2's refusal is raised as a ProviderError."""
        action = PowerAction(action)
        ec2 = self.ec2()
        ids = [machine.resource_id]
        current = self.get_machine(machine.resource_id)
        if action == PowerAction.POWERON:
            target = "running"
            if current.state not in ("running", "pending"):
                call(ec2.start_instances, InstanceIds=ids)
        elif action == PowerAction.POWEROFF:
            target = "stopped"
            if current.state not in ("stopped", "stopping"):
                call(ec2.stop_instances, InstanceIds=ids)
        else:
            target = "running"
            if current.state != "running":
                raise ProviderError(
                    f"AWS instance {machine.resource_id} is {current.state}: only a running "
                    "instance can be rebooted (power it on instead)"
                )
            call(ec2.reboot_instances, InstanceIds=ids)
        current, done = poll_until(
            lambda: self.get_machine(machine.resource_id),
            lambda m: m.state == target,
            timeout=float(settings.PROVIDER_WAIT_RUNNING_S),
        )
        if not done:
            raise TransientProviderError(
                f"AWS instance {machine.resource_id} not {target} yet after {action} "
                f"(state {current.state})"
            )
        return current

    # --- create -------------------------------------------------------------------------------

    def _resolve_ami(self) -> str:
        if self.ami:
            return self.ami
        response = call(self._client("ssm").get_parameter, Name=self.ami_parameter)
        return str(response["Parameter"]["Value"])

    @staticmethod
    def client_token(spec: MachineSpec, zone: str, market: str) -> str:
        """Same request, same token: EC2 then returns the instance it already launched."""
        digest = hashlib.sha256(f"{zone}|{spec.instance_type}|{market}".encode()).hexdigest()
        return f"{spec.instance_id}-{digest[:16]}"[:64]

    def create_machine(self, spec: MachineSpec) -> Machine:
        existing = self.find_machine(spec.instance_id)
        if existing is not None:
            logger.info("aws: adopting %s for %s", existing.resource_id, spec.instance_id)
            if existing.state == "stopped":
                call(self.ec2().start_instances, InstanceIds=[existing.resource_id])
            return self._wait_running(existing.resource_id)
        zone = spec.zone or (self.zones[0] if self.zones else "")
        markets = {
            "spot": ["spot"],
            "spot-fallback": ["spot", "on-demand"],
        }.get(self.market, ["on-demand"])
        ami = self._resolve_ami()
        last_error: ProviderError | None = None
        for market in markets:
            try:
                instance_id = self._run(spec, zone=zone, market=market, ami=ami)
            except OutOfCapacity as exc:
                last_error = exc
                if market == "spot" and len(markets) > 1:
                    logger.info(
                        "aws: no spot capacity for %s in %s; on-demand", spec.instance_type, zone
                    )
                    continue
                raise
            return self._wait_running(instance_id)
        assert last_error is not None
        raise last_error

    def _vpc_id(self, zone: str) -> str:
        if zone in self.subnets:
            subnets = call(self.ec2().describe_subnets, SubnetIds=[self.subnets[zone]])
            return str(subnets["Subnets"][0]["VpcId"])
        vpcs = call(self.ec2().describe_vpcs, Filters=[{"Name": "is-default", "Values": ["true"]}])[
            "Vpcs"
        ]
        if not vpcs:
            raise ProviderError(
                "no default VPC in this region: set the provider's subnets or security_group_ids"
            )
        return str(vpcs[0]["VpcId"])

    def _security_group_ids(self, zone: str, port: int) -> list[str]:
        """The security groups of a new instance (see the module's docstring)."""
        if self.security_group_ids:
            return self.security_group_ids
        ec2 = self.ec2()
        vpc_id = self._vpc_id(zone)
        name = f"inventiv-{managed_value()}-agents-{port}"
        found = call(
            ec2.describe_security_groups,
            Filters=[
                {"Name": "group-name", "Values": [name]},
                {"Name": "vpc-id", "Values": [vpc_id]},
            ],
        )["SecurityGroups"]
        if found:
            group_id, current = str(found[0]["GroupId"]), found[0].get("IpPermissions", [])
        else:
            group_id = str(
                call(
                    ec2.create_security_group,
                    GroupName=name,
                    Description=f"inventiv: only TCP {port} (the agent's TLS front) inbound",
                    VpcId=vpc_id,
                    TagSpecifications=[
                        {
                            "ResourceType": "security-group",
                            "Tags": [{"Key": MANAGED_TAG, "Value": managed_value()}],
                        }
                    ],
                )["GroupId"]
            )
            current = []
        v4 = sorted(c for c in settings.AGENT_INGRESS_CIDRS if ":" not in c)
        v6 = sorted(c for c in settings.AGENT_INGRESS_CIDRS if ":" in c)
        wanted = {
            "IpProtocol": "tcp",
            "FromPort": port,
            "ToPort": port,
            "IpRanges": [{"CidrIp": c} for c in v4],
            "Ipv6Ranges": [{"CidrIpv6": c} for c in v6],
        }

        def same(rule: dict[str, Any]) -> bool:
            return (
                (rule.get("IpProtocol"), rule.get("FromPort"), rule.get("ToPort"))
                == ("tcp", port, port)
                and sorted(r["CidrIp"] for r in rule.get("IpRanges", [])) == v4
                and sorted(r["CidrIpv6"] for r in rule.get("Ipv6Ranges", [])) == v6
                and not rule.get("UserIdGroupPairs")
                and not rule.get("PrefixListIds")
            )

        if len(current) == 1 and same(current[0]):
            return [group_id]
        if current:
            call(ec2.revoke_security_group_ingress, GroupId=group_id, IpPermissions=current)
        call(ec2.authorize_security_group_ingress, GroupId=group_id, IpPermissions=[wanted])
        return [group_id]

    def _run(self, spec: MachineSpec, *, zone: str, market: str, ami: str) -> str:
        tags = [
            {"Key": k, "Value": v} for k, v in {**spec.tags, **our_tags(spec.instance_id)}.items()
        ]
        tags.append({"Key": "Name", "Value": f"inventiv-{spec.instance_id[:8]}"})
        params: dict[str, Any] = {
            "ImageId": ami,
            "InstanceType": spec.instance_type,
            "MinCount": 1,
            "MaxCount": 1,
            "ClientToken": self.client_token(spec, zone, market),
            "UserData": spec.user_data,
            "MetadataOptions": {
                "HttpTokens": "required",
                "HttpEndpoint": "enabled",
                "HttpPutResponseHopLimit": 1,
            },
            "BlockDeviceMappings": [
                {
                    "DeviceName": self.root_device,
                    "Ebs": {
                        "VolumeSize": spec.boot_volume_gb,
                        "VolumeType": "gp3",
                        "DeleteOnTermination": True,
                        "Encrypted": True,
                    },
                }
            ],
            "TagSpecifications": [
                {"ResourceType": kind, "Tags": tags}
                for kind in ("instance", "volume", "network-interface")
            ],
            "InstanceInitiatedShutdownBehavior": "terminate",
        }
        if zone:
            params["Placement"] = {"AvailabilityZone": zone}
        if zone in self.subnets:
            params["SubnetId"] = self.subnets[zone]
        params["SecurityGroupIds"] = self._security_group_ids(zone, spec.engine_port)
        if self.instance_profile:
            params["IamInstanceProfile"] = {"Name": self.instance_profile}
        if market == "spot":
            params["InstanceMarketOptions"] = {
                "MarketType": "spot",
                "SpotOptions": {
                    "SpotInstanceType": "one-time",
                    "InstanceInterruptionBehavior": "terminate",
                },
            }
            # One-time spot requests cannot be told to stop on shutdown; terminate is default.
            del params["InstanceInitiatedShutdownBehavior"]
        response = call(self.ec2().run_instances, **params)
        return str(response["Instances"][0]["InstanceId"])

    def _wait_running(self, instance_id: str) -> Machine:
        def fetch() -> Machine:
            items = self._describe([{"Name": "instance-id", "Values": [instance_id]}])
            if not items:
                raise TransientProviderError(f"AWS instance {instance_id} not visible yet")
            return self._machine(items[0])

        machine, _ = poll_until(
            fetch,
            lambda m: m.state in ("running", "stopped", "terminated", "shutting-down"),
            timeout=float(settings.PROVIDER_WAIT_RUNNING_S),
        )
        if machine.state in ("terminated", "shutting-down"):
            raise OutOfCapacity(f"AWS instance {instance_id} ended at launch ({machine.state})")
        return machine

    # --- terminate ----------------------------------------------------------------------------

    def terminate_machine(self, machine: Machine) -> None:
        """Terminate and wait until terminated (volumes go with it: DeleteOnTermination), then
        delete any of our volumes left for this instance. Idempotent."""
        ec2 = self.ec2()
        try:
            call(ec2.terminate_instances, InstanceIds=[machine.resource_id])
        except MachineNotFound:
            pass
        else:

            def state() -> str:
                items = self._describe([{"Name": "instance-id", "Values": [machine.resource_id]}])
                return str(items[0]["State"]["Name"]) if items else "terminated"

            _, done = poll_until(
                state, lambda s: s == "terminated", timeout=float(settings.PROVIDER_WAIT_GONE_S)
            )
            if not done:
                raise TransientProviderError(
                    f"AWS instance {machine.resource_id} not terminated yet"
                )
        if machine.instance_id:
            for volume in self._volumes(
                [{"Name": f"tag:{INSTANCE_TAG}", "Values": [machine.instance_id]}]
            ):
                if volume.get("State") == "available":
                    self._delete_volume(volume["VolumeId"])

    def _volumes(self, filters: list[dict[str, Any]]) -> list[dict[str, Any]]:
        out: list[dict[str, Any]] = []
        for page in pages(self.ec2(), "describe_volumes", Filters=filters):
            out.extend(page.get("Volumes", []))
        return out

    def _delete_volume(self, volume_id: str) -> None:
        with contextlib.suppress(MachineNotFound):
            call(self.ec2().delete_volume, VolumeId=volume_id)

    def sweep_orphan_resources(
        self, *, owner_is_gone: Any, older_than: timedelta
    ) -> list[tuple[str, str, str]]:
        removed: list[tuple[str, str, str]] = []
        cutoff = timezone.now() - older_than
        for volume in self._volumes(
            [
                {"Name": f"tag:{MANAGED_TAG}", "Values": [managed_value()]},
                {"Name": "status", "Values": ["available"]},
            ]
        ):
            owner = _tag_dict(volume.get("Tags")).get(INSTANCE_TAG, "")
            created = volume.get("CreateTime")
            if created is not None and created > cutoff:
                continue
            if owner_is_gone(owner):
                self._delete_volume(volume["VolumeId"])
                removed.append(("volume", volume["VolumeId"], owner))
        return removed

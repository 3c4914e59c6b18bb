"""Scaleway GPU Instances, through the official ``scaleway`` SDK. (About 400 lines: one adapter
class whose create, adopt and terminate steps read best together; transport, errors, products
and cleanup are already out.)

Provider settings (``Provider.config``): ``project_id`` (required), ``zones`` (default
``["fr-par-2"]``), ``image`` (an image id) or ``image_label`` (default
``ubuntu_jammy_gpu_os_12``, resolved per zone through the Marketplace API), ``volume_type``
(default ``sbs_volume``), ``security_group`` (optional id: the operator's own, used as is;
else ours, see ``_security_group``), ``api_url`` (optional; else ``SCW_API_URL`` or the public
API). Credentials: ``access_key`` and ``secret_key`` (IAM API key).

Security group: unless the provider names one, servers get the platform's own for their zone
and instance port (tagged ``inventiv-managed`` and ``inventiv-port``): inbound dropped except
TCP on that port (the agent's sealed front) from each of ``INVENTIV_AGENT_INGRESS_CIDRS``,
outbound open, stateful. Its rules are re-set to exactly that on every create, so a changed
setting reaches it with the next machine.

What we create for one instance, all tagged ``inventiv-instance=<id>`` and
``inventiv-managed=<deployment>``: a routed flexible IPv4, a server with one boot volume sized
for the model, and its ``cloud-init`` user data. ``create_machine`` converges: it adopts a
server already carrying our tag (a lost response, a retried task), completes what is missing
(user data, power on) and never creates a second one. ``terminate_machine`` deletes the
server, then every volume and IP it had, and any of ours still tagged with its instance id.

SDK calls block; this adapter runs only in worker tasks. Each HTTP call has a timeout
(``INVENTIV_PROVIDER_CALL_TIMEOUT_S``, in ``transport``); errors are recognised from Scaleway's
error bodies (``errors``). The catalog and images are read in ``products``; releasing
resources is ``cleanup``.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from typing import Any, ClassVar

from django.conf import settings
from scaleway.instance.v1 import Server, SetSecurityGroupRulesRequestRule, VolumeServerTemplate
from scaleway_core.client import Client

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
    QuotaExceeded,
    TransientProviderError,
)
from apps.instances.providers.common import managed_value, poll_until
from apps.instances.providers.credentials import credentials_for
from apps.instances.providers.scaleway import cleanup, products
from apps.instances.providers.scaleway.transport import (
    PAGE_SIZE,
    BlockAPI,
    InstanceAPI,
    MarketplaceAPI,
    call,
    sdk_client,
    tag,
    tags_dict,
)

# Tags our security groups by the port they open (one group per zone, deployment and port).
PORT_TAG = "inventiv-port"
logger = logging.getLogger(__name__)

DEFAULT_ZONES = ["fr-par-2"]
DEFAULT_IMAGE_LABEL = "ubuntu_jammy_gpu_os_12"
USER_DATA_KEY = "cloud-init"
GB = 1000**3
# Server states in which the machine still exists and bills.
_GONE = {"terminated"}
# The state each power action ends in.
_POWER_TARGET = {
    PowerAction.POWERON: "running",
    PowerAction.POWEROFF: "stopped",
    PowerAction.REBOOT: "running",
}


class ScalewayAdapter(ProviderAdapter):
    kind: ClassVar[str] = "scaleway"

    def __init__(self, provider: Any) -> None:
        super().__init__(provider)
        config = provider.config or {}
        self.project_id: str = str(config.get("project_id") or "")
        self.zones: list[str] = list(config.get("zones") or DEFAULT_ZONES)
        self.image: str = str(config.get("image") or "")
        self.image_label: str = str(config.get("image_label") or DEFAULT_IMAGE_LABEL)
        self.volume_type: str = str(config.get("volume_type") or "sbs_volume")
        self.security_group: str | None = config.get("security_group") or None
        self._api_url: str | None = config.get("api_url") or None
        self._client: Client | None = None

    # --- clients ------------------------------------------------------------------------------

    def _sdk_client(self) -> Client:
        if self._client is None:
            creds = credentials_for(self.provider)
            self._client = sdk_client(
                access_key=creds.get("access_key"),
                secret_key=creds.get("secret_key"),
                project_id=self.project_id,
                zone=self.zones[0],
                api_url=self._api_url,
                page_size=PAGE_SIZE,
            )
        return self._client

    def _instance(self) -> InstanceAPI:
        return InstanceAPI(self._sdk_client())

    def _block(self) -> BlockAPI:
        return BlockAPI(self._sdk_client())

    # --- catalog ------------------------------------------------------------------------------

    def list_instance_types(self) -> list[InstanceTypeInfo]:
        return products.gpu_server_types(self._instance(), zones=self.zones)

    # --- lookups ------------------------------------------------------------------------------

    def _servers(self, zone: str, tags: list[str]) -> list[Server]:
        return list(
            call(
                self._instance().list_servers_all,
                zone=zone,
                project=self.project_id or None,
                tags=tags,
                per_page=PAGE_SIZE,
            )
        )

    def _machine(self, server: Server) -> Machine:
        tags = tags_dict(server.tags)
        volumes = [v for v in (server.volumes or {}).values() if v and v.id]
        public_ip = None
        ip_ids: list[str] = []
        for ip in server.public_ips or []:
            if ip.id:
                ip_ids.append(ip.id)
            if ip.address and public_ip is None and str(ip.family or "inet") == "inet":
                public_ip = ip.address
        if public_ip is None and server.public_ip is not None:
            public_ip = server.public_ip.address
        return Machine(
            resource_id=server.id,
            instance_id=tags.get(INSTANCE_TAG),
            state=str(server.state),
            zone=str(server.zone or ""),
            public_ip=public_ip,
            private_ip=server.private_ip or None,
            created_at=server.creation_date,
            attached={
                "sbs_volumes": [v.id for v in volumes if str(v.volume_type) == "sbs_volume"],
                "volumes": [v.id for v in volumes if str(v.volume_type) != "sbs_volume"],
                "ips": ip_ids,
            },
        )

    def find_machine(self, instance_id: str) -> Machine | None:
        found: list[Server] = []
        for zone in self.zones:
            found.extend(
                s
                for s in self._servers(zone, [tag(INSTANCE_TAG, instance_id)])
                if str(s.state) not in _GONE
            )
        if not found:
            return None
        found.sort(key=lambda s: s.creation_date or datetime.max.replace(tzinfo=UTC))
        return self._machine(found[0])

    def list_machines(self) -> list[Machine]:
        machines: list[Machine] = []
        for zone in self.zones:
            for server in self._servers(zone, [tag(MANAGED_TAG, managed_value())]):
                if str(server.state) not in _GONE:
                    machines.append(self._machine(server))
        return machines

    def _fetch(self, server_id: str, zone: str) -> Machine:
        """The server as it is now; MachineNotFound when deleted (404) or terminated."""
        server = call(self._instance().get_server, server_id=server_id, zone=zone).server
        if str(server.state) in _GONE:
            raise MachineNotFound(f"Scaleway server {server_id} is {server.state}")
        return self._machine(server)

    def get_machine(self, resource_id: str) -> Machine:
        """The server with this id in any configured zone (server ids do not say their zone)."""
        for zone in self.zones:
            try:
                return self._fetch(resource_id, zone)
            except MachineNotFound:
                continue
        raise MachineNotFound(f"Scaleway server {resource_id} not found in {self.zones}")

    # --- power --------------------------------------------------------------------------------

    def power(self, machine: Machine, action: PowerAction) -> Machine:
        """Run the server action and wait (``PROVIDER_WAIT_RUNNING_S``) for the state it ends
        in. Asking for the state the server is already in (or heading to) sends nothing."""
        action = PowerAction(action)
        target = _POWER_TARGET[action]
        zone = machine.zone or self.get_machine(machine.resource_id).zone or self.zones[0]
        current = self._fetch(machine.resource_id, zone)
        already = {
            PowerAction.POWERON: ("running", "starting"),
            PowerAction.POWEROFF: ("stopped", "stopping"),
            PowerAction.REBOOT: (),
        }[action]
        if current.state not in already:
            if action == PowerAction.REBOOT and current.state != "running":
                raise ProviderError(
                    f"Scaleway server {machine.resource_id} is {current.state}: only a running "
                    "server can be rebooted (power it on instead)"
                )
            call(
                self._instance().server_action,
                server_id=machine.resource_id,
                zone=zone,
                action=str(action),
            )
        current, done = poll_until(
            lambda: self._fetch(machine.resource_id, zone),
            lambda m: m.state in (target, "locked"),
            timeout=float(settings.PROVIDER_WAIT_RUNNING_S),
        )
        if current.state == "locked":
            raise ProviderError(f"Scaleway server {machine.resource_id} is locked")
        if not done:
            raise TransientProviderError(
                f"Scaleway server {machine.resource_id} not {target} yet after {action} "
                f"(state {current.state})"
            )
        return current

    # --- create -------------------------------------------------------------------------------

    def _resolve_image(self, zone: str, commercial_type: str) -> str:
        if self.image:
            return self.image
        return products.marketplace_image(
            MarketplaceAPI(self._sdk_client()),
            zone=zone,
            commercial_type=commercial_type,
            image_label=self.image_label,
            volume_type=self.volume_type,
        )

    def _security_group(self, zone: str, port: int) -> str:
        """The security group id for a new server (see the module's docstring)."""
        if self.security_group:
            return self.security_group
        api = self._instance()
        tags = [tag(MANAGED_TAG, managed_value()), tag(PORT_TAG, str(port))]
        found = call(
            api.list_security_groups,
            zone=zone,
            project=self.project_id or None,
            tags=tags,
            per_page=PAGE_SIZE,
        ).security_groups
        if found:
            group_id = found[0].id
        else:
            group_id = call(
                api.create_security_group,
                zone=zone,
                name=f"inventiv-{managed_value()}-agents-{port}",
                description=f"inventiv: only TCP {port} (the agent's TLS front) inbound",
                stateful=True,
                project=self.project_id or None,
                tags=tags,
                inbound_default_policy="drop",  # type: ignore[arg-type]
                outbound_default_policy="accept",  # type: ignore[arg-type]
                enable_default_security=True,
            ).security_group.id
        rules = [
            SetSecurityGroupRulesRequestRule(
                action="accept",  # type: ignore[arg-type]
                protocol="TCP",  # type: ignore[arg-type]
                direction="inbound",  # type: ignore[arg-type]
                ip_range=cidr,
                position=position,
                dest_port_from=port,
                dest_port_to=port,
                editable=True,
            )
            for position, cidr in enumerate(settings.AGENT_INGRESS_CIDRS, start=1)
        ]
        call(api.set_security_group_rules, zone=zone, security_group_id=group_id, rules=rules)
        return group_id

    def _our_ip(self, zone: str, instance_id: str) -> Any | None:
        ips = call(
            self._instance().list_ips,
            zone=zone,
            project=self.project_id or None,
            tags=[tag(INSTANCE_TAG, instance_id)],
            per_page=PAGE_SIZE,
        ).ips
        return ips[0] if ips else None

    def create_machine(self, spec: MachineSpec) -> Machine:
        zone = spec.zone or self.zones[0]
        api = self._instance()
        tags = [
            tag(INSTANCE_TAG, spec.instance_id),
            tag(MANAGED_TAG, managed_value()),
            *(tag(k, v) for k, v in spec.tags.items() if k not in (INSTANCE_TAG, MANAGED_TAG)),
        ]
        existing = self.find_machine(spec.instance_id)
        if existing is not None:
            logger.info(
                "scaleway: adopting server %s for %s", existing.resource_id, spec.instance_id
            )
            return self._converge(existing, spec)
        image = self._resolve_image(zone, spec.instance_type)
        security_group = self._security_group(zone, spec.engine_port)
        ip = self._our_ip(zone, spec.instance_id)
        if ip is None:
            ip = call(
                api.create_ip,
                zone=zone,
                project=self.project_id or None,
                tags=tags,
                type_="routed_ipv4",
            ).ip
        try:
            server = call(
                api.create_server,
                zone=zone,
                commercial_type=spec.instance_type,
                name=f"inventiv-{spec.instance_id[:8]}",
                image=image,
                volumes={
                    "0": VolumeServerTemplate(
                        volume_type=self.volume_type,  # type: ignore[arg-type]
                        size=spec.boot_volume_gb * GB,
                        boot=True,
                        name=f"inventiv-{spec.instance_id[:8]}-boot",
                    )
                },
                dynamic_ip_required=False,
                routed_ip_enabled=True,
                public_ips=[ip.id],
                project=self.project_id or None,
                tags=tags,
                security_group=security_group,
            ).server
        except ProviderError as exc:
            if not exc.transient:
                # Refused: nothing was created but the IP; release it so that the next offer
                # starts clean. (A transient error may hide a created server: keep the IP, the
                # retry adopts both.)
                cleanup.delete_ip(api, zone, ip.id)
            raise
        machine = self._machine(server)
        self._tag_volumes(zone, machine, tags)
        return self._converge(machine, spec)

    def _tag_volumes(self, zone: str, machine: Machine, tags: list[str]) -> None:
        """Block volumes do not inherit the server's tags; tag them so that the sweeper finds
        one left behind. Best effort: terminate deletes them through the server anyway."""
        for volume_id in machine.attached.get("sbs_volumes", []):
            try:
                call(self._block().update_volume, volume_id=volume_id, zone=zone, tags=tags)
            except ProviderError as exc:
                logger.warning("scaleway: could not tag volume %s: %s", volume_id, exc.code)

    def _converge(self, machine: Machine, spec: MachineSpec) -> Machine:
        """Finish a created (or adopted) server: user data present, powered on. On a capacity
        or quota failure at power-on the server is deleted with all it holds, then the error is
        raised, so that the next offer starts clean."""
        api = self._instance()
        zone = machine.zone or spec.zone or self.zones[0]
        if spec.user_data:
            keys = call(
                api.list_server_user_data, server_id=machine.resource_id, zone=zone
            ).user_data
            if USER_DATA_KEY not in (keys or []):
                call(
                    api.set_server_user_data,
                    server_id=machine.resource_id,
                    zone=zone,
                    key=USER_DATA_KEY,
                    content=spec.user_data.encode(),
                )
        if machine.state == "stopped":
            try:
                call(api.server_action, server_id=machine.resource_id, zone=zone, action="poweron")
            except (QuotaExceeded, OutOfCapacity) as exc:
                logger.info(
                    "scaleway: power-on of %s failed (%s); cleaning up",
                    machine.resource_id,
                    exc.code,
                )
                self.terminate_machine(machine)
                raise
        return self._wait_running(machine)

    def _wait_running(self, machine: Machine) -> Machine:
        zone = machine.zone or self.zones[0]

        def fetch() -> Machine:
            return self._machine(
                call(self._instance().get_server, server_id=machine.resource_id, zone=zone).server
            )

        current, _ = poll_until(
            fetch,
            lambda m: m.state in ("running", "stopped", "locked"),
            timeout=float(settings.PROVIDER_WAIT_RUNNING_S),
        )
        return current

    # --- terminate ----------------------------------------------------------------------------

    def terminate_machine(self, machine: Machine) -> None:
        """Delete the server, then its volumes and IPs, then anything else still tagged with its
        instance id. Idempotent. Raises TransientProviderError if the server is not gone in
        time (the task retries; the sweeper is the net)."""
        api = self._instance()
        zone = machine.zone or self.zones[0]
        attached = {k: list(v) for k, v in machine.attached.items()}
        try:
            server = call(api.get_server, server_id=machine.resource_id, zone=zone).server
        except MachineNotFound:
            server = None
        if server is not None:
            fresh = self._machine(server)
            for key, ids in fresh.attached.items():
                attached.setdefault(key, [])
                attached[key].extend(i for i in ids if i not in attached[key])
            cleanup.delete_server(api, server, zone)
        if machine.instance_id:
            cleanup.collect_tagged(api, self._block(), zone, machine.instance_id, attached)
        for volume_id in attached.get("sbs_volumes", []):
            cleanup.delete_block_volume(self._block(), zone, volume_id)
        for volume_id in attached.get("volumes", []):
            cleanup.delete_instance_volume(api, zone, volume_id)
        for ip_id in attached.get("ips", []):
            cleanup.delete_ip(api, zone, ip_id)

    def sweep_orphan_resources(
        self, *, owner_is_gone: Callable[[str], bool], older_than: timedelta
    ) -> list[tuple[str, str, str]]:
        """``cleanup.sweep_orphans`` in every configured zone."""
        return cleanup.sweep_orphans(
            self._instance(),
            self._block(),
            zones=self.zones,
            owner_is_gone=owner_is_gone,
            older_than=older_than,
        )

"""Scaleway GPU Instances, through the official ``scaleway`` SDK.

Provider settings (``Provider.config``): ``project_id`` (required), ``zones`` (default
``["fr-par-2"]``), ``image`` (an image id) or ``image_label`` (default
``ubuntu_jammy_gpu_os_12``, resolved per zone through the Marketplace API), ``volume_type``
(default ``sbs_volume``), ``security_group`` (optional id), ``api_url`` (optional; else
``SCW_API_URL`` or the public API). Credentials: ``access_key`` and ``secret_key`` (IAM API key).

What we create for one instance, all tagged ``inventiv-instance=<id>`` and
``inventiv-managed=<deployment>``: a routed flexible IPv4, a server with one boot volume sized
for the model, and its ``cloud-init`` user data. ``create_machine`` converges: it adopts a
server already carrying our tag (a lost response, a retried task), completes what is missing
(user data, power on) and never creates a second one. ``terminate_machine`` deletes the
server, then every volume and IP it had, and any of ours still tagged with its instance id.

SDK calls block; this adapter runs only in worker tasks. Each HTTP call has a timeout
(``INVENTIV_PROVIDER_CALL_TIMEOUT_S``); errors are recognised from Scaleway's error bodies.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import threading
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from typing import Any, ClassVar

import requests
from django.conf import settings
from django.utils import timezone
from scaleway.block.v1 import BlockV1API
from scaleway.instance.v1 import Server, VolumeServerTemplate
from scaleway.instance.v1.custom_api import InstanceUtilsV1API
from scaleway.marketplace.v2 import MarketplaceV2API
from scaleway_core.api import API, ScalewayException
from scaleway_core.client import Client

from apps.instances.providers.base import (
    INSTANCE_TAG,
    MANAGED_TAG,
    AuthenticationFailed,
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
from apps.instances.providers.common import call_timeout, managed_value, poll_until
from apps.instances.providers.credentials import credentials_for

logger = logging.getLogger(__name__)

DEFAULT_ZONES = ["fr-par-2"]
DEFAULT_IMAGE_LABEL = "ubuntu_jammy_gpu_os_12"
USER_DATA_KEY = "cloud-init"
GIB = 1024**3
GB = 1000**3
PAGE_SIZE = 50
# Server states in which the machine still exists and bills.
_GONE = {"terminated"}
# The state each power action ends in.
_POWER_TARGET = {
    PowerAction.POWERON: "running",
    PowerAction.POWEROFF: "stopped",
    PowerAction.REBOOT: "running",
}

_local = threading.local()


def _session() -> requests.Session:
    """One pooled HTTP session per worker thread (requests sessions are not thread-safe)."""
    session = getattr(_local, "session", None)
    if session is None:
        session = requests.Session()
        _local.session = session
    return session


class _TimedAPI(API):
    """The SDK's request method with a pooled session and a timeout (the SDK sets none)."""

    def _request(
        self,
        method: str,
        path: str,
        params: Any = {},  # noqa: B006 - the SDK's signature
        headers: dict[str, str] = {},  # noqa: B006
        body: Any = None,
    ) -> requests.Response:
        method = method.upper()
        extra: dict[str, str] = {}
        if method in ("POST", "PUT", "PATCH"):
            extra["Content-Type"] = "application/json; charset=utf-8"
        raw_body: bytes | str = body if isinstance(body, bytes) else json.dumps(body or {})
        request_params: list[tuple[str, Any]] = []
        for key, value in params.items():
            if value is None:
                continue
            if isinstance(value, list):
                request_params.extend((key, item) for item in value)
            else:
                request_params.append((key, value))
        all_headers = {
            "accept": "application/json",
            "user-agent": self.client.user_agent,
            **extra,
            **headers,
        }
        if self.client.secret_key is not None:
            all_headers["x-auth-token"] = self.client.secret_key
        try:
            response = _session().request(
                method=method,
                url=f"{self.client.api_url}{path}",
                params=request_params,
                headers=all_headers,
                data=raw_body,
                verify=not self.client.api_allow_insecure,
                timeout=call_timeout(),
            )
        except requests.RequestException as exc:
            # The request may have been applied: callers converge by looking for our tags.
            raise TransientProviderError(
                f"Scaleway API unreachable ({type(exc).__name__})"
            ) from None
        if response.headers.get("x-total-count"):
            data = response.json()
            data["total_count"] = response.headers["x-total-count"]
            response._content = json.dumps(data).encode()
        return response


class _Instance(_TimedAPI, InstanceUtilsV1API):
    pass


class _Block(_TimedAPI, BlockV1API):
    pass


class _Marketplace(_TimedAPI, MarketplaceV2API):
    pass


def _error_from(exc: ScalewayException) -> ProviderError:
    """Map a Scaleway error body (``{"type": ..., "message": ...}``) to our typed errors."""
    status = exc.response.status_code
    try:
        body = exc.response.json()
    except ValueError:
        body = {}
    kind = str(body.get("type") or "")
    message = str(body.get("message") or exc.response.reason or "error")
    detail = f"Scaleway {status} {kind}: {message}".strip()
    if kind == "quotas_exceeded":
        resources = ", ".join(
            f"{d.get('resource')} ({d.get('current')}/{d.get('quota')})"
            for d in body.get("details") or []
            if isinstance(d, dict)
        )
        return QuotaExceeded(detail + (f" [{resources}]" if resources else ""))
    if kind == "out_of_stock" or (kind == "precondition_failed" and "stock" in message.lower()):
        return OutOfCapacity(detail)
    if status in (401, 403) or kind in ("denied_authentication", "permissions_denied"):
        return AuthenticationFailed(detail)
    if status == 404 or kind == "not_found":
        return MachineNotFound(detail)
    if status in (409, 423, 429) or status >= 500 or kind in ("transient_state", "locked"):
        return TransientProviderError(detail)
    return ProviderError(detail)


def _tag(key: str, value: str) -> str:
    return f"{key}={value}"


def _tags_dict(tags: list[str] | None) -> dict[str, str]:
    out: dict[str, str] = {}
    for tag in tags or []:
        key, sep, value = tag.partition("=")
        if sep:
            out[key] = value
    return out


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
            client = Client()
            client.access_key = creds.get("access_key")
            client.secret_key = creds.get("secret_key")
            client.default_project_id = self.project_id or None
            client.default_zone = self.zones[0]
            client.default_region = self.zones[0].rsplit("-", 1)[0]
            client.default_page_size = PAGE_SIZE
            client.api_url = (
                self._api_url or os.environ.get("SCW_API_URL") or "https://api.scaleway.com"
            ).rstrip("/")
            try:
                client.validate()
            except ValueError as exc:
                # The SDK's message may quote the key: say only what is wrong.
                raise AuthenticationFailed(
                    "Scaleway credentials or settings are invalid: "
                    + ("bad access/secret key" if "key" in str(exc).lower() else "bad settings")
                ) from None
            self._client = client
        return self._client

    def _instance(self) -> _Instance:
        return _Instance(self._sdk_client())

    def _block(self) -> _Block:
        return _Block(self._sdk_client())

    def _call(self, fn: Any, /, **kwargs: Any) -> Any:
        try:
            return fn(**kwargs)
        except ScalewayException as exc:
            raise _error_from(exc) from None

    # --- catalog ------------------------------------------------------------------------------

    def list_instance_types(self) -> list[InstanceTypeInfo]:
        api = self._instance()
        merged: dict[str, dict[str, Any]] = {}
        for zone in self.zones:
            types = self._paged_dict(api.list_servers_types, zone=zone)
            availability = self._paged_dict(api.get_server_types_availability, zone=zone)
            for code, server_type in types.items():
                gpu = server_type.gpu_info
                if not server_type.gpu or gpu is None:
                    continue
                entry = merged.setdefault(
                    code,
                    {
                        "code": code,
                        "gpu_model": f"{gpu.gpu_manufacturer} {gpu.gpu_name}".strip(),
                        "gpu_count": int(server_type.gpu),
                        "vram_per_gpu_gb": round(gpu.gpu_memory / GIB),
                        "vcpus": int(server_type.ncpus),
                        "ram_gb": round(server_type.ram / GIB),
                        "hourly_price": Decimal(str(round(server_type.hourly_price, 4))),
                        "currency": "EUR",
                        "availability": {},
                    },
                )
                item = availability.get(code)
                entry["availability"][zone] = str(item.availability) if item else "shortage"
        return [InstanceTypeInfo(**entry) for entry in merged.values()]

    def _paged_dict(self, method: Any, *, zone: str) -> dict[str, Any]:
        """Scaleway's product lists are dicts keyed by type, paged with ``total_count``."""
        out: dict[str, Any] = {}
        page = 1
        while True:
            response = self._call(method, zone=zone, page=page, per_page=PAGE_SIZE)
            batch = response.servers or {}
            out.update(batch)
            if not batch or len(out) >= int(response.total_count or 0):
                return out
            page += 1

    # --- lookups ------------------------------------------------------------------------------

    def _servers(self, zone: str, tags: list[str]) -> list[Server]:
        return list(
            self._call(
                self._instance().list_servers_all,
                zone=zone,
                project=self.project_id or None,
                tags=tags,
                per_page=PAGE_SIZE,
            )
        )

    def _machine(self, server: Server) -> Machine:
        tags = _tags_dict(server.tags)
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
                for s in self._servers(zone, [_tag(INSTANCE_TAG, instance_id)])
                if str(s.state) not in _GONE
            )
        if not found:
            return None
        found.sort(key=lambda s: s.creation_date or datetime.max.replace(tzinfo=UTC))
        return self._machine(found[0])

    def list_machines(self) -> list[Machine]:
        machines: list[Machine] = []
        for zone in self.zones:
            for server in self._servers(zone, [_tag(MANAGED_TAG, managed_value())]):
                if str(server.state) not in _GONE:
                    machines.append(self._machine(server))
        return machines

    def _fetch(self, server_id: str, zone: str) -> Machine:
        """The server as it is now; MachineNotFound when deleted (404) or terminated."""
        server = self._call(self._instance().get_server, server_id=server_id, zone=zone).server
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
            self._call(
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
        market = _Marketplace(self._sdk_client())
        images = self._call(
            market.list_local_images,
            zone=zone,
            image_label=self.image_label,
            type_="instance_sbs" if self.volume_type == "sbs_volume" else "instance_local",
            page_size=100,
        ).local_images
        for image in images:
            if not image.compatible_commercial_types or commercial_type in (
                image.compatible_commercial_types
            ):
                return str(image.id)
        raise ProviderError(
            f"No image {self.image_label!r} for {commercial_type} in {zone}; set 'image' or "
            "'image_label' in the provider settings."
        )

    def _our_ip(self, zone: str, instance_id: str) -> Any | None:
        ips = self._call(
            self._instance().list_ips,
            zone=zone,
            project=self.project_id or None,
            tags=[_tag(INSTANCE_TAG, instance_id)],
            per_page=PAGE_SIZE,
        ).ips
        return ips[0] if ips else None

    def create_machine(self, spec: MachineSpec) -> Machine:
        zone = spec.zone or self.zones[0]
        api = self._instance()
        tags = [
            _tag(INSTANCE_TAG, spec.instance_id),
            _tag(MANAGED_TAG, managed_value()),
            *(_tag(k, v) for k, v in spec.tags.items() if k not in (INSTANCE_TAG, MANAGED_TAG)),
        ]
        existing = self.find_machine(spec.instance_id)
        if existing is not None:
            logger.info(
                "scaleway: adopting server %s for %s", existing.resource_id, spec.instance_id
            )
            return self._converge(existing, spec)
        image = self._resolve_image(zone, spec.instance_type)
        ip = self._our_ip(zone, spec.instance_id)
        if ip is None:
            ip = self._call(
                api.create_ip,
                zone=zone,
                project=self.project_id or None,
                tags=tags,
                type_="routed_ipv4",
            ).ip
        try:
            server = self._call(
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
                security_group=self.security_group,
            ).server
        except ProviderError as exc:
            if not exc.transient:
                # Refused: nothing was created but the IP; release it so that the next offer
                # starts clean. (A transient error may hide a created server: keep the IP, the
                # retry adopts both.)
                self._delete_ip(zone, ip.id)
            raise
        machine = self._machine(server)
        self._tag_volumes(zone, machine, tags)
        return self._converge(machine, spec)

    def _tag_volumes(self, zone: str, machine: Machine, tags: list[str]) -> None:
        """Block volumes do not inherit the server's tags; tag them so that the sweeper finds
        one left behind. Best effort: terminate deletes them through the server anyway."""
        for volume_id in machine.attached.get("sbs_volumes", []):
            try:
                self._call(self._block().update_volume, volume_id=volume_id, zone=zone, tags=tags)
            except ProviderError as exc:
                logger.warning("scaleway: could not tag volume %s: %s", volume_id, exc.code)

    def _converge(self, machine: Machine, spec: MachineSpec) -> Machine:
        """Finish a created (or adopted) server: user data present, powered on. On a capacity
        or quota failure at power-on the server is deleted with all it holds, then the error is
        raised, so that the next offer starts clean."""
        api = self._instance()
        zone = machine.zone or spec.zone or self.zones[0]
        if spec.user_data:
            keys = self._call(
                api.list_server_user_data, server_id=machine.resource_id, zone=zone
            ).user_data
            if USER_DATA_KEY not in (keys or []):
                self._call(
                    api.set_server_user_data,
                    server_id=machine.resource_id,
                    zone=zone,
                    key=USER_DATA_KEY,
                    content=spec.user_data.encode(),
                )
        if machine.state == "stopped":
            try:
                self._call(
                    api.server_action, server_id=machine.resource_id, zone=zone, action="poweron"
                )
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
                self._call(
                    self._instance().get_server, server_id=machine.resource_id, zone=zone
                ).server
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
            server = self._call(api.get_server, server_id=machine.resource_id, zone=zone).server
        except MachineNotFound:
            server = None
        if server is not None:
            fresh = self._machine(server)
            for key, ids in fresh.attached.items():
                attached.setdefault(key, [])
                attached[key].extend(i for i in ids if i not in attached[key])
            self._delete_server(server, zone)
        if machine.instance_id:
            self._collect_tagged(zone, machine.instance_id, attached)
        for volume_id in attached.get("sbs_volumes", []):
            self._delete_block_volume(zone, volume_id)
        for volume_id in attached.get("volumes", []):
            self._delete_instance_volume(zone, volume_id)
        for ip_id in attached.get("ips", []):
            self._delete_ip(zone, ip_id)

    def _delete_server(self, server: Server, zone: str) -> None:
        api = self._instance()
        state = str(server.state)
        try:
            if state == "stopped":
                self._call(api.delete_server, server_id=server.id, zone=zone)
            elif state in ("running", "starting", "stopped in place", "locked"):
                self._call(api.server_action, server_id=server.id, zone=zone, action="terminate")
            # "stopping": an action is under way; wait for it below.
        except MachineNotFound:
            return
        except TransientProviderError:
            pass  # a transient state: wait, the next attempt (or task retry) finishes it

        def gone() -> str:
            try:
                current = self._call(api.get_server, server_id=server.id, zone=zone).server
            except MachineNotFound:
                return "gone"
            if str(current.state) == "stopped":
                self._call(api.delete_server, server_id=server.id, zone=zone)
            return str(current.state)

        _, done = poll_until(
            gone, lambda s: s == "gone", timeout=float(settings.PROVIDER_WAIT_GONE_S)
        )
        if not done:
            raise TransientProviderError(f"Scaleway server {server.id} not deleted yet")

    def _collect_tagged(self, zone: str, instance_id: str, attached: dict[str, list[str]]) -> None:
        tag = _tag(INSTANCE_TAG, instance_id)
        for ip in self._call(
            self._instance().list_ips, zone=zone, tags=[tag], per_page=PAGE_SIZE
        ).ips:
            if ip.id not in attached.setdefault("ips", []):
                attached["ips"].append(ip.id)
        volumes = self._call(
            self._block().list_volumes,
            zone=zone,
            tags=[tag],
            page_size=PAGE_SIZE,
            include_deleted=False,
        ).volumes
        for volume in volumes:
            if volume.id not in attached.setdefault("sbs_volumes", []):
                attached["sbs_volumes"].append(volume.id)

    def _delete_block_volume(self, zone: str, volume_id: str) -> None:
        block = self._block()

        def attempt() -> bool:
            try:
                self._call(block.delete_volume, volume_id=volume_id, zone=zone)
            except MachineNotFound:
                return True
            except AuthenticationFailed:
                raise
            except ProviderError as exc:
                # Still detaching from the deleted server ("in_use"): try again shortly.
                logger.info("scaleway: volume %s not deletable yet: %s", volume_id, exc.code)
                return False
            return True

        _, done = poll_until(attempt, bool, timeout=float(settings.PROVIDER_WAIT_GONE_S))
        if not done:
            raise TransientProviderError(f"Scaleway volume {volume_id} not deleted yet")

    def _delete_instance_volume(self, zone: str, volume_id: str) -> None:
        with contextlib.suppress(MachineNotFound):
            self._call(self._instance().delete_volume, volume_id=volume_id, zone=zone)

    def _delete_ip(self, zone: str, ip_id: str) -> None:
        with contextlib.suppress(MachineNotFound):
            self._call(self._instance().delete_ip, ip=ip_id, zone=zone)

    # --- orphans (for the sweeper) ------------------------------------------------------------

    def sweep_orphan_resources(
        self, *, owner_is_gone: Callable[[str], bool], older_than: timedelta
    ) -> list[tuple[str, str, str]]:
        """Delete our tagged IPs and block volumes that are attached to nothing and whose
        instance is gone (``owner_is_gone(instance_id)``); volumes also only when older than
        ``older_than``. Returns (kind, id, instance id) of what was removed."""
        removed: list[tuple[str, str, str]] = []
        managed = _tag(MANAGED_TAG, managed_value())
        cutoff = timezone.now() - older_than
        for zone in self.zones:
            ips = self._call(
                self._instance().list_ips, zone=zone, tags=[managed], per_page=PAGE_SIZE
            ).ips
            for ip in ips:
                owner = _tags_dict(ip.tags).get(INSTANCE_TAG, "")
                if ip.server is None and owner_is_gone(owner):
                    self._delete_ip(zone, ip.id)
                    removed.append(("ip", ip.id, owner))
            volumes = self._call(
                self._block().list_volumes,
                zone=zone,
                tags=[managed],
                page_size=PAGE_SIZE,
                include_deleted=False,
            ).volumes
            for volume in volumes:
                owner = _tags_dict(volume.tags).get(INSTANCE_TAG, "")
                in_use = any(ref.product_resource_id for ref in volume.references or [])
                young = volume.created_at is not None and volume.created_at > cutoff
                if in_use or young or not owner_is_gone(owner):
                    continue
                self._delete_block_volume(zone, volume.id)
                removed.append(("volume", volume.id, owner))
        return removed

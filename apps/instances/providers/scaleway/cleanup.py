"""Releasing Scaleway resources: a server (waiting until it is gone), its block and instance
volumes and IPs, what is still tagged for an instance, and the sweeper's orphans. Every
function is idempotent: a resource already gone (404) is success."""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Callable
from datetime import timedelta

from django.conf import settings
from django.utils import timezone
from scaleway.instance.v1 import Server

from apps.instances.providers.base import (
    INSTANCE_TAG,
    MANAGED_TAG,
    AuthenticationFailed,
    MachineNotFound,
    ProviderError,
    TransientProviderError,
)
from apps.instances.providers.common import managed_value, poll_until
from apps.instances.providers.scaleway.transport import (
    PAGE_SIZE,
    BlockAPI,
    InstanceAPI,
    call,
    tag,
    tags_dict,
)

logger = logging.getLogger(__name__)


def delete_server(api: InstanceAPI, server: Server, zone: str) -> None:
    """Terminate (or delete, when stopped) and wait (``PROVIDER_WAIT_GONE_S``) until the server
    is gone. Raises TransientProviderError if it is not gone in time."""
    state = str(server.state)
    try:
        if state == "stopped":
            call(api.delete_server, server_id=server.id, zone=zone)
        elif state in ("running", "starting", "stopped in place", "locked"):
            call(api.server_action, server_id=server.id, zone=zone, action="terminate")
        # "stopping": an action is under way; wait for it below.
    except MachineNotFound:
        return
    except TransientProviderError:
        pass  # a transient state: wait, the next attempt (or task retry) finishes it

    def gone() -> str:
        try:
            current = call(api.get_server, server_id=server.id, zone=zone).server
        except MachineNotFound:
            return "gone"
        if str(current.state) == "stopped":
            call(api.delete_server, server_id=server.id, zone=zone)
        return str(current.state)

    _, done = poll_until(gone, lambda s: s == "gone", timeout=float(settings.PROVIDER_WAIT_GONE_S))
    if not done:
        raise TransientProviderError(f"Scaleway server {server.id} not deleted yet")


def collect_tagged(
    api: InstanceAPI, block: BlockAPI, zone: str, instance_id: str, attached: dict[str, list[str]]
) -> None:
    """Add to ``attached`` the IPs and block volumes still tagged with this instance id."""
    instance_tag = tag(INSTANCE_TAG, instance_id)
    for ip in call(api.list_ips, zone=zone, tags=[instance_tag], per_page=PAGE_SIZE).ips:
        if ip.id not in attached.setdefault("ips", []):
            attached["ips"].append(ip.id)
    volumes = call(
        block.list_volumes,
        zone=zone,
        tags=[instance_tag],
        page_size=PAGE_SIZE,
        include_deleted=False,
    ).volumes
    for volume in volumes:
        if volume.id not in attached.setdefault("sbs_volumes", []):
            attached["sbs_volumes"].append(volume.id)


def delete_block_volume(block: BlockAPI, zone: str, volume_id: str) -> None:
    """Delete, retrying while it still detaches from a deleted server. Raises
    TransientProviderError if it is not deletable in time."""

    def attempt() -> bool:
        try:
            call(block.delete_volume, volume_id=volume_id, zone=zone)
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


def delete_instance_volume(api: InstanceAPI, zone: str, volume_id: str) -> None:
    with contextlib.suppress(MachineNotFound):
        call(api.delete_volume, volume_id=volume_id, zone=zone)


def delete_ip(api: InstanceAPI, zone: str, ip_id: str) -> None:
    with contextlib.suppress(MachineNotFound):
        call(api.delete_ip, ip=ip_id, zone=zone)


def sweep_orphans(
    api: InstanceAPI,
    block: BlockAPI,
    *,
    zones: list[str],
    owner_is_gone: Callable[[str], bool],
    older_than: timedelta,
) -> list[tuple[str, str, str]]:
    """Delete our tagged IPs and block volumes that are attached to nothing and whose
    instance is gone (``owner_is_gone(instance_id)``); volumes also only when older than
    ``older_than``. Returns (kind, id, instance id) of what was removed."""
    removed: list[tuple[str, str, str]] = []
    managed = tag(MANAGED_TAG, managed_value())
    cutoff = timezone.now() - older_than
    for zone in zones:
        ips = call(api.list_ips, zone=zone, tags=[managed], per_page=PAGE_SIZE).ips
        for ip in ips:
            owner = tags_dict(ip.tags).get(INSTANCE_TAG, "")
            if ip.server is None and owner_is_gone(owner):
                delete_ip(api, zone, ip.id)
                removed.append(("ip", ip.id, owner))
        volumes = call(
            block.list_volumes,
            zone=zone,
            tags=[managed],
            page_size=PAGE_SIZE,
            include_deleted=False,
        ).volumes
        for volume in volumes:
            owner = tags_dict(volume.tags).get(INSTANCE_TAG, "")
            in_use = any(ref.product_resource_id for ref in volume.references or [])
            young = volume.created_at is not None and volume.created_at > cutoff
            if in_use or young or not owner_is_gone(owner):
                continue
            delete_block_volume(block, zone, volume.id)
            removed.append(("volume", volume.id, owner))
    return removed

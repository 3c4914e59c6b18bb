"""The sweeper: nothing we created keeps billing once no live instance owns it.

Per provider, it lists every machine carrying our ``inventiv-managed`` tag and decides:

* its instance is live (any status but ``terminated``) → kept. If the instance has not
  recorded it yet (the worker died between create and record), it is *adoptable*: the
  re-sent provision command finds it by tag and records it (``create_machine`` adopts);
* it is a second machine of a live instance that recorded another one (a duplicate) → removed;
* its instance is terminated or unknown → removed, but only once the machine is older than the
  grace period (``INVENTIV_SWEEP_GRACE_S``): a machine just created may not be recorded, or
  even listed, yet. A machine without a creation date is aged from when we first saw it.

Then it removes tagged volumes/IPs attached to nothing whose instance is gone
(``sweep_orphan_resources``). Everything decided is recorded as ``SweepRecord`` rows. Safe to
run twice; provider calls happen outside transactions; one provider's failure is recorded and
does not stop another's sweep.
"""

from __future__ import annotations

import logging
import uuid
from dataclasses import asdict, dataclass
from datetime import datetime, timedelta

from django.conf import settings
from django.utils import timezone

from apps.instances.choices import InstanceStatus
from apps.instances.models import Instance, Provider, SweepRecord
from apps.instances.providers import get_adapter
from apps.instances.providers.base import Machine, MachineNotFound, ProviderError

logger = logging.getLogger(__name__)
R = SweepRecord.Action


@dataclass
class SweepResult:
    provider_id: int
    seen: int = 0
    kept: int = 0
    adoptable: int = 0
    removed: int = 0
    deferred: int = 0
    failed: int = 0
    error: str = ""

    def as_dict(self) -> dict[str, object]:
        return asdict(self)


def sweepable_provider_ids() -> list[int]:
    kinds = ["scaleway", "aws", "onprem"]
    return list(
        Provider.objects.filter(enabled=True, kind__in=kinds)
        .order_by("id")
        .values_list("id", flat=True)
    )


def _uuid(value: str | None) -> uuid.UUID | None:
    try:
        return uuid.UUID(str(value))
    except (TypeError, ValueError):
        return None


def _first_seen(provider: Provider, resource_id: str, now: datetime) -> datetime:
    first = (
        SweepRecord.objects.filter(provider=provider, resource_id=resource_id)
        .order_by("id")
        .values_list("created_at", flat=True)
        .first()
    )
    return first or now


def _record(
    provider: Provider,
    machine_or_id: Machine | str,
    action: str,
    reason: str,
    *,
    kind: str = "machine",
    instance_id: str = "",
) -> None:
    if isinstance(machine_or_id, Machine):
        resource_id, instance_id = machine_or_id.resource_id, machine_or_id.instance_id or ""
    else:
        resource_id = machine_or_id
    SweepRecord.objects.create(
        provider=provider,
        resource_kind=kind,
        resource_id=resource_id[:255],
        instance_id=instance_id[:64],
        action=action,
        reason=reason[:500],
    )


def sweep_provider(*, provider_id: int) -> SweepResult:
    result = SweepResult(provider_id=provider_id)
    provider = Provider.objects.filter(id=provider_id).first()
    if provider is None:
        result.error = "no such provider"
        return result
    adapter = get_adapter(provider)
    now = timezone.now()
    grace = timedelta(seconds=settings.SWEEP_GRACE_S)
    try:
        machines = adapter.list_machines()
    except ProviderError as exc:
        result.error = f"{exc.code}: {exc}"[:500]
        logger.warning("sweep of %s: listing failed: %s", provider.name, exc.code)
        return result
    ids = {u for m in machines if (u := _uuid(m.instance_id)) is not None}
    instances = {
        str(i.id): i
        for i in Instance.objects.filter(id__in=ids).only(
            "id", "status", "provider_resource_id", "terminated_at"
        )
    }
    for machine in machines:
        result.seen += 1
        instance = instances.get(str(_uuid(machine.instance_id)))
        born = machine.created_at or _first_seen(provider, machine.resource_id, now)
        old_enough = now - born >= grace
        if instance is not None and instance.status != InstanceStatus.TERMINATED:
            recorded = instance.provider_resource_id
            if recorded and recorded != machine.resource_id and old_enough:
                reason = f"duplicate of {recorded} for live instance {instance.id}"
            else:
                result.kept += 1
                if not recorded:
                    result.adoptable += 1
                    _record(
                        provider,
                        machine,
                        R.KEPT,
                        f"adoptable: instance {instance.status}, machine not recorded yet",
                    )
                continue
        elif instance is not None:
            reason = "its instance is terminated"
        else:
            reason = "no instance with this id"
        if not old_enough:
            result.deferred += 1
            _record(provider, machine, R.DEFERRED, f"{reason}; inside the grace period")
            continue
        try:
            adapter.terminate_machine(machine)
        except MachineNotFound:
            pass
        except ProviderError as exc:
            result.failed += 1
            _record(provider, machine, R.FAILED, f"{reason}; {exc.code}: {exc}")
            continue
        result.removed += 1
        logger.warning("sweep of %s: removed %s (%s)", provider.name, machine.resource_id, reason)
        _record(provider, machine, R.REMOVED, reason)

    def owner_is_gone(instance_id: str) -> bool:
        key = _uuid(instance_id)
        if key is None:
            return True
        row = Instance.objects.filter(id=key).values("status", "terminated_at").first()
        if row is None:
            return True
        ended = row["terminated_at"]
        return bool(row["status"] == InstanceStatus.TERMINATED and ended and now - ended >= grace)

    try:
        leftovers = adapter.sweep_orphan_resources(owner_is_gone=owner_is_gone, older_than=grace)
    except ProviderError as exc:
        result.failed += 1
        result.error = f"orphan resources: {exc.code}: {exc}"[:500]
        return result
    for kind, resource_id, instance_id in leftovers:
        result.removed += 1
        _record(
            provider,
            resource_id,
            R.REMOVED,
            "attached to nothing; its instance is gone",
            kind=kind,
            instance_id=instance_id,
        )
    return result

"""Power actions on an instance's machine (the admin's "Reboot machine"), run by
``instance_power_task`` in a worker: provider calls never run in the web process."""

from __future__ import annotations

import logging

from apps.instances.choices import HOLDS_MACHINE
from apps.instances.models import Instance
from apps.instances.providers import get_adapter
from apps.instances.providers.base import PowerAction, ProviderError

logger = logging.getLogger(__name__)


def instance_power_apply(*, instance_id: str, action: str) -> str:
    """Apply ``action`` to the instance's machine. Not idempotent by nature (a reboot run twice
    reboots twice), so its task is neither retried nor acknowledged late. A provider error is
    logged and returned as ``"failed: <code>: <message>"``, never raised."""
    instance = Instance.objects.select_related("provider").filter(id=instance_id).first()
    if instance is None or instance.status not in HOLDS_MACHINE:
        return "skipped: no live instance"
    if not instance.provider_resource_id:
        return "skipped: no machine recorded"
    adapter = get_adapter(instance.provider)
    try:
        machine = adapter.get_machine(instance.provider_resource_id)
        machine = adapter.power(machine, PowerAction(action))
    except ProviderError as exc:
        logger.warning(
            "instance %s: %s of machine %s failed: %s: %s",
            instance_id,
            action,
            instance.provider_resource_id,
            exc.code,
            exc,
        )
        return f"failed: {exc.code}: {exc}"
    logger.info(
        "instance %s: %s of machine %s done (%s)",
        instance_id,
        action,
        machine.resource_id,
        machine.state,
    )
    return f"{action}: {machine.state}"

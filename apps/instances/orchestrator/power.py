"""Power actions on an instance's machine, run by ``instance_power_task`` in a worker (provider
calls never run in the web process): the admin's "Reboot machine", and scaling to zero by
power-off (docs/autoscaling.md): a drained instance in ``powering_off`` is stopped with its
disk kept (``powered_off``), and a wake powers it on again (``booting``: its agent resumes with
its stored credential, its model still on disk). Also the drain and power-off deadlines the
reconciler enforces."""

from __future__ import annotations

import logging
from datetime import datetime, timedelta
from decimal import Decimal, InvalidOperation
from typing import Any

from django.conf import settings

from apps.instances.agents.bootstrap import boot_volume_gb
from apps.instances.choices import HOLDS_MACHINE, InstanceStatus
from apps.instances.models import Instance
from apps.instances.providers import get_adapter
from apps.instances.providers.base import Machine, PowerAction, ProviderAdapter, ProviderError
from apps.instances.services import (
    instance_fail,
    instance_finish_drain,
    instance_request_termination,
    instance_transition,
)

logger = logging.getLogger(__name__)
S = InstanceStatus

# A power-off that has not completed by then (a lost command, a stuck machine) terminates.
POWER_OFF_DEADLINE_S = 900.0
# The provider's price of the disk a powered-off machine keeps, per GB and hour (``config``).
KEPT_PRICE_KEY = "powered_off_gb_hour_price"


def kept_hourly_price(instance: Instance) -> Decimal:
    """What a powered-off machine still costs per hour: its boot disk at the provider's
    ``powered_off_gb_hour_price`` (0 when the operator did not set one)."""
    raw = (instance.provider.config or {}).get(KEPT_PRICE_KEY)
    try:
        per_gb = Decimal(str(raw)) if raw not in (None, "") else Decimal(0)
    except InvalidOperation:
        logger.warning("provider %s: %s=%r is not a number", instance.provider, KEPT_PRICE_KEY, raw)
        per_gb = Decimal(0)
    return (per_gb * boot_volume_gb(instance.llm_model)).quantize(Decimal("0.000001"))


def _powered_off(instance: Instance, machine: Machine) -> str:
    """powering_off → powered_off, recording what the kept disk costs per hour."""
    kept = kept_hourly_price(instance)
    data = {**(instance.provider_data or {}), "powered_off_hourly_price": str(kept)}
    if instance_transition(
        instance=instance,
        to=S.POWERED_OFF,
        expected=S.POWERING_OFF,
        reason=f"machine {machine.resource_id} powered off ({machine.state}), disk kept "
        f"({kept} {instance.instance_type.currency if instance.instance_type else 'EUR'}/h)",
        fields={"provider_data": data},
    ):
        return f"poweroff: {machine.state}"
    return "poweroff: done, but the instance changed meanwhile"


def _powered_on(instance: Instance, adapter: ProviderAdapter, machine: Machine) -> str:
    """A woken machine may come back with another address (a cloud's dynamic public IP)."""
    fields: dict[str, Any] = {}
    host = adapter.engine_host(machine)
    if host and host != instance.engine_host:
        fields["engine_host"] = host
    if machine.public_ip and machine.public_ip != instance.public_ip:
        fields["public_ip"] = machine.public_ip
    if fields:
        Instance.objects.filter(id=instance.id).update(**fields)
    return f"poweron: {machine.state}"


def instance_power_apply(*, instance_id: str, action: str) -> str:
    """Apply ``action`` to the instance's machine. Not idempotent by nature (a reboot run twice
    reboots twice), so its task is neither retried nor acknowledged late. A provider error is
    logged and returned as ``"failed: <code>: <message>"``, never raised. For scaling to zero:
    a failed power-off terminates the instance instead (the next wake creates a machine); a
    failed power-on fails it (``startup_failed``) and the converge path creates another."""
    instance = (
        Instance.objects.select_related("provider", "llm_model", "instance_type")
        .filter(id=instance_id)
        .first()
    )
    if instance is None or instance.status not in HOLDS_MACHINE:
        return "skipped: no live instance"
    if not instance.provider_resource_id:
        return "skipped: no machine recorded"
    power_action = PowerAction(action)
    to_zero = power_action == PowerAction.POWEROFF and instance.status == S.POWERING_OFF
    # A machine woken from zero: in booting with an agent that registered before.
    waking = (
        power_action == PowerAction.POWERON
        and instance.status == S.BOOTING
        and instance.registered_at is not None
    )
    adapter = get_adapter(instance.provider)
    try:
        machine = adapter.get_machine(instance.provider_resource_id)
        machine = adapter.power(machine, power_action)
    except ProviderError as exc:
        logger.warning(
            "instance %s: %s of machine %s failed: %s: %s",
            instance_id,
            action,
            instance.provider_resource_id,
            exc.code,
            exc,
        )
        if to_zero:
            instance_request_termination(
                instance=instance,
                reason=f"power-off failed ({exc.code}: {exc}): terminated instead",
                expected=S.POWERING_OFF,
            )
        elif waking:
            instance_fail(
                instance=instance, to=S.STARTUP_FAILED, reason=f"power-on failed: {exc.code}: {exc}"
            )
        return f"failed: {exc.code}: {exc}"
    logger.info(
        "instance %s: %s of machine %s done (%s)",
        instance_id,
        action,
        machine.resource_id,
        machine.state,
    )
    if to_zero:
        return _powered_off(instance, machine)
    if waking:
        return _powered_on(instance, adapter, machine)
    return f"{action}: {machine.state}"


def drain_deadline_s(instance: Instance) -> float:
    """How long this instance may drain: its model code's ``drain_timeout_s``, else the
    platform's ``INVENTIV_DRAIN_DEADLINE_S``."""
    own = instance.llm_model.drain_timeout_s
    return float(own) if own is not None else float(settings.DRAIN_DEADLINE_S)


def instance_enforce_drain_deadlines(*, now: datetime) -> dict[str, int]:
    """Draining instances past their deadline leave (terminated, or powered off when their
    model code keeps one at zero): a stream still live then is cut, never one before. A
    power-off not done within ``POWER_OFF_DEADLINE_S`` terminates."""
    drained = stuck = 0
    for instance in Instance.objects.select_related("llm_model", "provider").filter(
        status=S.DRAINING
    ):
        seconds = drain_deadline_s(instance)
        if instance.status_changed_at >= now - timedelta(seconds=seconds):
            continue
        if instance_finish_drain(
            instance=instance, reason=f"drain deadline ({seconds:.0f}s) passed"
        ):
            drained += 1
    for instance in Instance.objects.select_related("llm_model").filter(
        status=S.POWERING_OFF,
        status_changed_at__lt=now - timedelta(seconds=POWER_OFF_DEADLINE_S),
    ):
        if instance_request_termination(
            instance=instance,
            reason=f"power-off not done within {POWER_OFF_DEADLINE_S:.0f}s: terminated instead",
            expected=S.POWERING_OFF,
        ):
            stuck += 1
    return {"drain_deadlines": drained, "power_off_deadlines": stuck}

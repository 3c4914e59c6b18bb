"""Writes for instances. The only place an instance's status changes.

Every status change is one compare-and-set (``UPDATE ... WHERE id=? AND status=?``) that also
appends an ``InstanceEvent`` in the same transaction and publishes ``EVENT:INSTANCE_<STATUS>``
after commit. Losing the race is a normal ``False`` return, not an exception.
"""

from __future__ import annotations

import logging
import secrets
import socket
from datetime import datetime, timedelta
from typing import Any

from django.conf import settings
from django.db import transaction
from django.utils import timezone

from apps.instances import commands
from apps.instances.choices import (
    HOLDS_MACHINE,
    POWER_KINDS,
    POWERED_DOWN,
    InstanceStatus,
    ProviderKind,
    can_transition,
)
from apps.instances.models import Instance, InstanceEvent, Provider
from apps.instances.providers import get_adapter
from apps.instances.providers.base import NotSupported, PowerAction, ProviderError
from apps.models.choices import DEPLOYED_STATUSES, ModelStatus, ScaleToZeroMode
from apps.models.models import LlmModel
from apps.models.services import model_transition
from inventiv import crypto
from inventiv.errors import ApplicationError, Conflict
from inventiv.events import (
    INSTANCE_GROUP,
    STAFF_GROUP,
    InstanceStatusEvent,
    org_group,
    publish_on_commit,
)

logger = logging.getLogger(__name__)

S = InstanceStatus


def _event_payload(
    instance: Instance, *, from_status: str, to: str, reason: str, at: datetime
) -> InstanceStatusEvent:
    return InstanceStatusEvent(
        instance_id=str(instance.id),
        organization_id=instance.organization_id,
        model_code_id=instance.llm_model_id,
        model_code=instance.llm_model.name,
        status=to,
        from_status=from_status,
        reason=reason,
        at=at.isoformat(),
    )


def instance_transition(
    *,
    instance: Instance,
    to: InstanceStatus,
    reason: str,
    expected: InstanceStatus | None = None,
    fields: dict[str, Any] | None = None,
    data: dict[str, Any] | None = None,
) -> bool:
    """Move ``instance`` to ``to`` if the transition table allows it from its current status.

    ``expected`` pins the status we believe it has (default: the status read now). ``fields``
    are written in the same UPDATE. Returns False when the transition is not allowed or another
    writer changed the status first. On success ``instance`` is refreshed in memory.
    """
    current = expected or S(Instance.objects.values_list("status", flat=True).get(id=instance.id))
    if not can_transition(current, to):
        return False
    now = timezone.now()
    values: dict[str, Any] = {"status": to, "status_reason": reason[:500], "status_changed_at": now}
    if to in (S.PROVISIONING_FAILED, S.STARTUP_FAILED):
        values["failure_reason"] = reason[:500]
    if to == S.READY:
        values["ready_at"] = now
    if to == S.TERMINATED:
        values["terminated_at"] = now
        values["credential_hash"] = ""
        values["bootstrap_token_encrypted"] = ""
    values.update(fields or {})
    with transaction.atomic():
        updated = Instance.objects.filter(id=instance.id, status=current).update(**values)
        if not updated:
            return False
        InstanceEvent.objects.create(
            instance_id=instance.id,
            from_status=current,
            to_status=to,
            reason=reason[:500],
            data=data or {},
        )
        for key, value in values.items():
            setattr(instance, key, value)
        if to == S.READY:  # the model code's first ready replica makes it active
            model_transition(
                model=instance.llm_model,
                to=ModelStatus.ACTIVE,
                reason=f"instance {instance.id} ready",
                expected=ModelStatus.DEPLOYING,
            )
        payload = _event_payload(instance, from_status=current, to=to, reason=reason, at=now)
        publish_on_commit(
            [org_group(instance.organization_id), INSTANCE_GROUP, STAFF_GROUP],
            f"EVENT:INSTANCE_{to.upper()}",
            payload,
        )
    logger.info("instance %s: %s -> %s (%s)", instance.id, current, to, reason)
    return True


# Engine ports of local instances: below Linux's ephemeral range (32768-60999), so that an
# outgoing connection's source port can never take an engine's port before it binds.
LOCAL_PORT_RANGE = (20000, 32000)


def _free_local_port() -> int:
    """A port no live local instance uses and that is free now."""
    taken = set(
        Instance.objects.filter(
            provider__kind=ProviderKind.LOCAL, status__in=HOLDS_MACHINE
        ).values_list("engine_port", flat=True)
    )
    for _ in range(200):
        port = secrets.randbelow(LOCAL_PORT_RANGE[1] - LOCAL_PORT_RANGE[0]) + LOCAL_PORT_RANGE[0]
        if port in taken:
            continue
        with socket.socket() as sock:
            try:
                sock.bind(("127.0.0.1", port))
            except OSError:
                continue
        return port
    raise ApplicationError("No free local port for an engine.", code="no_local_port")


def instance_create(
    *, llm_model: LlmModel, provider: Provider, replaces: Instance | None = None
) -> Instance:
    """Record the intent to run one more instance of ``llm_model`` (status ``provisioning``)
    and send ``CMD:PROVISION_INSTANCE`` after commit. Call inside the caller's transaction."""
    now = timezone.now()
    bootstrap_token = crypto.new_token("ivb_")
    local = provider.kind == ProviderKind.LOCAL
    instance = Instance.objects.create(
        organization_id=llm_model.organization_id,
        llm_model=llm_model,
        provider=provider,
        instance_type=llm_model.instance_type,
        zone=llm_model.zone,
        status=S.PROVISIONING,
        status_reason="replica wanted",
        status_changed_at=now,
        engine_host="127.0.0.1" if local else "",
        engine_port=_free_local_port() if local else 8000,
        engine_secret_encrypted=crypto.encrypt(crypto.new_token("ive_")),
        bootstrap_token_hash=crypto.token_hash(bootstrap_token),
        bootstrap_token_encrypted=crypto.encrypt(bootstrap_token),
        bootstrap_expires_at=now + timedelta(seconds=settings.BOOTSTRAP_TOKEN_TTL_S),
        command_sent_at=now,
        replaces=replaces,
    )
    InstanceEvent.objects.create(
        instance=instance,
        from_status="",
        to_status=S.PROVISIONING,
        reason=f"replica wanted for {llm_model.name}"
        + (f" (replaces {replaces.id})" if replaces else ""),
    )
    publish_on_commit(
        [org_group(instance.organization_id), INSTANCE_GROUP, STAFF_GROUP],
        "EVENT:INSTANCE_PROVISIONING",
        _event_payload(
            instance, from_status="", to=S.PROVISIONING, reason="replica wanted", at=now
        ),
    )
    commands.provision_instance(instance_id=str(instance.id))
    return instance


def instance_request_termination(
    *, instance: Instance, reason: str, expected: InstanceStatus | None = None
) -> bool:
    """Move a machine-holding instance to ``terminating`` and send ``CMD:TERMINATE_INSTANCE``
    after commit. ``expected`` pins the status the decision was based on (a reconciler's
    snapshot), so that an instance that changed meanwhile is left alone. False if it is
    already terminating/terminated or lost the race."""
    if not instance_transition(
        instance=instance,
        to=S.TERMINATING,
        reason=reason,
        expected=expected,
        fields={"command_sent_at": timezone.now()},
    ):
        return False
    commands.terminate_instance(instance_id=str(instance.id))
    return True


def instance_fail(*, instance: Instance, to: InstanceStatus, reason: str) -> bool:
    """Record a failure (provisioning_failed / startup_failed), then clean up through
    ``terminating`` so that nothing is left at the provider."""
    if not instance_transition(instance=instance, to=to, reason=reason):
        return False
    return instance_request_termination(instance=instance, reason=f"cleanup after {to}")


def instance_drain(*, instance: Instance, reason: str) -> bool:
    """Stop routing to ``instance``; the agent reports DRAINED once in-flight work is done and
    the instance then terminates. Instances not yet serving terminate at once."""
    status = S(instance.status)
    if status == S.READY:
        return instance_transition(instance=instance, to=S.DRAINING, reason=reason, expected=status)
    if status in (S.STARTING, S.UNAVAILABLE, S.PROVISIONING, S.BOOTING):
        return instance_request_termination(instance=instance, reason=reason, expected=status)
    raise Conflict(f"An instance in status {instance.status} cannot be drained.")


def _keeps_machine_at_zero(instance: Instance) -> bool:
    """Whether this drained instance is the one its model code keeps powered off (the model
    code locked by the caller): it scales to zero by power-off and wants no replica now, the
    provider can power machines off, the machine served (its disk has the model), and no
    other machine of the model code is kept already."""
    model = LlmModel.objects.select_for_update().get(id=instance.llm_model_id)
    return (
        model.scale_to_zero_mode == ScaleToZeroMode.POWER_OFF
        and model.desired_replicas == 0
        and model.status in DEPLOYED_STATUSES
        and instance.provider.kind in POWER_KINDS
        and bool(instance.provider_resource_id)
        and instance.registered_at is not None
        and not model.instances.filter(status__in=POWERED_DOWN).exclude(id=instance.id).exists()
    )


def instance_finish_drain(
    *, instance: Instance, reason: str, expected: InstanceStatus = S.DRAINING
) -> bool:
    """A draining instance is done (its agent reports nothing in flight, or its drain deadline
    passed): terminate it, or, when its model code scales to zero by power-off
    (``scale_to_zero_mode``) and this is the machine it keeps, power it off
    (``powering_off``, then ``instance_power_task`` stops the machine, disk kept). False when
    the instance is no longer ``expected`` (another writer won)."""
    with transaction.atomic():
        if _keeps_machine_at_zero(instance):
            if not instance_transition(
                instance=instance,
                to=S.POWERING_OFF,
                expected=expected,
                reason=f"{reason}; scaled to zero: powering off, disk kept",
                fields={"command_sent_at": timezone.now()},
            ):
                return False
            commands.power_instance(instance_id=str(instance.id), action=str(PowerAction.POWEROFF))
            return True
        return instance_request_termination(instance=instance, reason=reason, expected=expected)


def instance_power_on_to_wake(*, instance: Instance, reason: str) -> bool:
    """Wake a powered-off instance instead of creating one: ``powered_off`` → ``booting`` and
    ``instance_power_task`` powers the machine on; its agent resumes with its stored
    credential (no new registration, no model download). False if it lost a race."""
    if not instance_transition(
        instance=instance,
        to=S.BOOTING,
        expected=S.POWERED_OFF,
        reason=reason,
        fields={"command_sent_at": timezone.now()},
    ):
        return False
    commands.power_instance(instance_id=str(instance.id), action=str(PowerAction.POWERON))
    return True


def instance_power(*, instance: Instance, action: str, requested_by: str = "") -> None:
    """Send a power action (``poweron``/``poweroff``/``reboot``) for ``instance``'s machine to
    a worker (``instance_power_task``, after commit): provider calls never run in the web
    process. Raises ProviderError at once when it cannot apply: no machine recorded, or the
    provider kind has no power actions (local, on-premise). The status is not changed: missed
    heartbeats are expected for ``POWER_ACTION_GRACE_S`` (no replacement meanwhile), and a
    rebooted agent heartbeats again."""
    try:
        power_action = PowerAction(action)
    except ValueError:
        raise ProviderError(f"unknown power action {action!r}") from None
    if instance.status not in HOLDS_MACHINE or not instance.provider_resource_id:
        raise ProviderError(f"instance {instance.id} has no machine to {power_action}")
    if not get_adapter(instance.provider).supports_power:
        raise NotSupported(
            f"power action {power_action} is not supported by {instance.provider.kind}"
        )
    logger.info(
        "instance %s: %s of machine %s requested by %s",
        instance.id,
        power_action,
        instance.provider_resource_id,
        requested_by or "?",
    )
    until = timezone.now() + timedelta(seconds=settings.POWER_ACTION_GRACE_S)
    Instance.objects.filter(id=instance.id).update(maintenance_until=until)
    instance.maintenance_until = until
    commands.power_instance(instance_id=str(instance.id), action=str(power_action))

"""Provisioning and termination steps, run by the per-instance tasks (CMD:PROVISION_INSTANCE,
CMD:TERMINATE_INSTANCE). Safe to run twice: state is checked first, external ids are recorded
as soon as known, and adapters adopt a machine already carrying our tag."""

from __future__ import annotations

import contextlib
from dataclasses import replace
from typing import Any

from django.conf import settings
from django.utils import timezone

from apps.instances.agents import bootstrap
from apps.instances.choices import HOLDS_MACHINE, InstanceStatus, ProviderKind
from apps.instances.models import Instance, Provider, ProvisionAttempt
from apps.instances.orchestrator.leases import (
    PROVISION,
    TERMINATE,
    CommandLease,
    LeaseHeld,
    command_lease,
    leases_drop,
)
from apps.instances.orchestrator.scaling import model_code_finish_decommission
from apps.instances.providers import get_adapter
from apps.instances.providers.base import (
    Machine,
    MachineNotFound,
    MachineSpec,
    NotSupported,
    ProviderAdapter,
    ProviderError,
)
from apps.instances.providers.matching import Offer, offers_for_instance
from apps.instances.services import (
    instance_fail,
    instance_request_termination,
    instance_transition,
)
from apps.models.choices import ModelStatus
from inventiv import crypto

S = InstanceStatus


def _record_attempt(instance: Instance, offer: Offer, *, error: ProviderError | None) -> None:
    ProvisionAttempt.objects.create(
        instance=instance,
        provider_id=offer.provider_id,
        instance_type_id=offer.instance_type_id,
        instance_type_code=offer.instance_type_code,
        zone=offer.zone,
        outcome=ProvisionAttempt.Outcome.FAILED if error else ProvisionAttempt.Outcome.SUCCEEDED,
        error_code=error.code if error else "",
        message=str(error)[:1000] if error else "",
    )


def _spec(instance: Instance, offer: Offer) -> MachineSpec:
    token = crypto.decrypt(instance.bootstrap_token_encrypted)
    user_data = (
        bootstrap.render_user_data(instance=instance, bootstrap_token=token)
        if (offer.provider_kind not in (ProviderKind.LOCAL, ProviderKind.ONPREM))
        else ""
    )
    return MachineSpec(
        instance_id=str(instance.id),
        instance_type=offer.instance_type_code,
        zone=offer.zone,
        control_plane_url=settings.AGENT_API_URL,
        bootstrap_token=token,
        engine_port=instance.engine_port,
        boot_volume_gb=bootstrap.boot_volume_gb(instance.llm_model),
        user_data=user_data,
        tags={"inventiv-instance": str(instance.id)},
    )


class TransientProvisioningError(Exception):
    """Raised to the task so that Celery retries it later."""


def instance_provision(*, instance_id: str) -> str:
    """``CMD:PROVISION_INSTANCE``. Tries each offer in order until one gives a machine;
    records every attempt with why it failed; fails the instance with the reasons when none
    does. Runs under the instance's command lease (``orchestrator.leases``): a second delivery
    while a live worker works on it skips; a dead worker's is re-sent by the reconciler within
    seconds. Returns what it did (for logs and tests)."""
    try:
        with command_lease(instance_id=instance_id, kind=PROVISION) as lease:
            return _provision(instance_id, lease)
    except LeaseHeld:
        return "skipped: another worker is provisioning it"


def _provision(instance_id: str, lease: CommandLease) -> str:
    instance = (
        Instance.objects.select_related("provider", "llm_model").filter(id=instance_id).first()
    )
    if instance is None or instance.status != S.PROVISIONING:
        return "skipped: not provisioning"
    if not instance.bootstrap_token_encrypted:
        # The agent already registered (the create response was slow or lost).
        return "skipped: agent already registered"
    # The reconciler re-sends a command only once this is old: the command is being worked on.
    Instance.objects.filter(id=instance.id).update(command_sent_at=timezone.now())
    offers = offers_for_instance(instance)
    failed_before = {
        (a.provider_id, a.instance_type_code, a.zone)
        for a in instance.attempts.filter(outcome=ProvisionAttempt.Outcome.FAILED).exclude(
            error_code="transient"
        )
    }
    reasons: list[str] = []
    for offer in offers:
        if (offer.provider_id, offer.instance_type_code, offer.zone) in failed_before:
            reasons.append(f"{offer.instance_type_code}@{offer.zone}: failed before")
            continue
        adapter = get_adapter(
            instance.provider
            if offer.provider_id == instance.provider_id
            else _provider(offer.provider_id)
        )
        try:
            machine = adapter.create_machine(_spec(instance, offer))
        except ProviderError as exc:
            _record_attempt(instance, offer, error=exc)
            if exc.transient:
                raise TransientProvisioningError(str(exc)) from exc
            reasons.append(f"{offer.instance_type_code}@{offer.zone}: {exc.code}: {exc}")
            continue
        _record_attempt(instance, offer, error=None)
        if lease.lost:
            # Paused past our lease: another worker may have provisioned meanwhile.
            recorded = Instance.objects.values_list("provider_resource_id", flat=True).get(
                id=instance.id
            )
            if recorded and recorded != machine.resource_id:
                adapter.terminate_machine(machine)
                return f"created {machine.resource_id}, released: lease lost to {recorded}"
        fields: dict[str, Any] = {
            "provider_id": offer.provider_id,
            "provider_resource_id": machine.resource_id,
            "zone": machine.zone or offer.zone,
            "instance_type_id": offer.instance_type_id,
            "hourly_price": offer.hourly_price,
            "public_ip": machine.public_ip or "",
        }
        host = adapter.engine_host(machine)
        if host and not instance.engine_host:
            fields["engine_host"] = host
        # Record the machine first, whatever the status became meanwhile (the agent may have
        # registered already): it must never be forgotten.
        Instance.objects.filter(id=instance.id).update(**fields)
        if instance_transition(
            instance=instance,
            to=S.BOOTING,
            expected=S.PROVISIONING,
            reason=f"machine {machine.resource_id} created ({offer.instance_type_code}"
            f"@{machine.zone or offer.zone})",
        ):
            return f"created {machine.resource_id}"
        status = Instance.objects.values_list("status", flat=True).get(id=instance.id)
        if status in (S.TERMINATING, S.TERMINATED):
            # Terminated while the create call was in flight: the terminate step may not have
            # seen this machine yet. Release it now rather than leave it billing.
            adapter.terminate_machine(machine)
            return f"created {machine.resource_id}, released at once: instance {status}"
        return f"created {machine.resource_id}"
    message = "; ".join(reasons) if reasons else "no compatible offer"
    instance_fail(
        instance=instance,
        to=S.PROVISIONING_FAILED,
        reason=f"no offer could be provisioned: {message}",
    )
    return "failed: " + message


def _provider(provider_id: int) -> Provider:
    return Provider.objects.get(id=provider_id)


def instance_terminate(*, instance_id: str) -> str:
    """``CMD:TERMINATE_INSTANCE``. Releases the machine and everything attached, then marks
    the instance terminated. Idempotent: a machine already gone is success. Under the
    instance's terminate lease (it may overtake a provision in flight)."""
    try:
        with command_lease(instance_id=instance_id, kind=TERMINATE):
            result = _terminate(instance_id)
    except LeaseHeld:
        return "skipped: another worker is terminating it"
    if result == "terminated":
        leases_drop(instance_ids=[instance_id])
    return result


def _terminate(instance_id: str) -> str:
    instance = (
        Instance.objects.select_related("provider", "llm_model").filter(id=instance_id).first()
    )
    if instance is None or instance.status != S.TERMINATING:
        return "skipped: not terminating"
    adapter = get_adapter(instance.provider)
    machine = adapter.find_machine(str(instance.id))
    if machine is None and instance.provider_resource_id:
        machine = _machine_by_resource_id(adapter, instance)
    if machine is not None:
        with contextlib.suppress(MachineNotFound):
            adapter.terminate_machine(machine)
    instance_transition(
        instance=instance,
        to=S.TERMINATED,
        expected=S.TERMINATING,
        reason="machine released" if machine else "no machine left at the provider",
    )
    _after_instance_terminated(instance)
    return "terminated"


def _machine_by_resource_id(adapter: ProviderAdapter, instance: Instance) -> Machine | None:
    """The recorded machine when our tag no longer finds it (tags lost or edited, a zone
    dropped from the settings). None when it is gone, when the adapter cannot look machines up
    by id, or when it carries another instance's tag (not ours to release)."""
    try:
        machine = adapter.get_machine(instance.provider_resource_id)
    except (MachineNotFound, NotSupported):
        return None
    if machine.instance_id is None:
        # Ours by the recorded id: let terminate also release what is still tagged for us.
        return replace(machine, instance_id=str(instance.id))
    return machine if machine.instance_id == str(instance.id) else None


def _after_instance_terminated(instance: Instance) -> None:
    model = instance.llm_model
    if model.status == ModelStatus.DECOMMISSIONING:
        model_code_finish_decommission(model_code_id=model.id)


def local_fleet_shutdown(*, reason: str) -> int:
    """Terminate, synchronously, every instance on a local provider (the embedded platform is
    stopping and its agents are its own child processes). Deployed model codes stay deployed:
    the next start provisions fresh instances at once. Returns how many were terminated."""
    count = 0
    for instance in Instance.objects.select_related("provider", "llm_model").filter(
        provider__kind=ProviderKind.LOCAL, status__in=HOLDS_MACHINE
    ):
        if instance.status != S.TERMINATING:
            instance_request_termination(instance=instance, reason=reason)
        if instance_terminate(instance_id=str(instance.id)) == "terminated":
            count += 1
    return count


def local_fleet_reattach(*, reason: str) -> tuple[int, int]:
    """At the start of an embedded platform whose local agents were left running (``--keep-
    agents``): a local instance whose tagged processes are alive is reattached (its heartbeat
    clock restarts now, so the first reconcile does not mark it unavailable before the agent,
    retrying every heartbeat interval, reports in); one whose processes are gone (a reboot) is
    terminated at once, so the first reconcile provisions a fresh one instead of waiting for
    the heartbeat deadline. Returns (reattached, replaced)."""
    reattached = replaced = 0
    serving = (S.STARTING, S.READY, S.UNAVAILABLE)
    for instance in Instance.objects.select_related("provider", "llm_model").filter(
        provider__kind=ProviderKind.LOCAL, status__in=HOLDS_MACHINE
    ):
        alive = get_adapter(instance.provider).find_machine(str(instance.id)) is not None
        if alive and instance.status in serving:
            reattached += Instance.objects.filter(pk=instance.pk, status=instance.status).update(
                last_heartbeat_at=timezone.now()
            )
        elif not alive and instance.status != S.TERMINATING:
            instance_request_termination(instance=instance, reason=reason)
            if instance_terminate(instance_id=str(instance.id)) == "terminated":
                replaced += 1
    return reattached, replaced

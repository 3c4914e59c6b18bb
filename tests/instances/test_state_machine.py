"""The instance state machine and the reconciler, without processes."""

from __future__ import annotations

import threading
from datetime import timedelta
from typing import Any

import pytest
from django.db import connection
from django.utils import timezone

from apps.instances import orchestrator
from apps.instances.choices import TRANSITIONS, can_transition
from apps.instances.choices import InstanceStatus as S
from apps.instances.models import Instance, InstanceEvent, OrchestratorLock, Provider
from apps.instances.services import instance_transition
from apps.models.models import LlmModel
from apps.models.services import model_deploy
from tests.instances.factories import make_instance


def test_every_status_has_a_row_in_the_transition_table() -> None:
    assert set(TRANSITIONS) == set(S)
    assert not can_transition(S.TERMINATED, S.READY)
    assert can_transition(S.READY, S.DRAINING)


@pytest.mark.django_db
def test_a_forbidden_transition_changes_nothing(mock_model: LlmModel) -> None:
    instance, _ = make_instance(mock_model, S.PROVISIONING)
    assert instance_transition(instance=instance, to=S.READY, reason="nope") is False
    instance.refresh_from_db()
    assert instance.status == S.PROVISIONING
    assert not InstanceEvent.objects.filter(instance=instance).exists()


@pytest.mark.django_db
def test_a_transition_records_its_reason(mock_model: LlmModel) -> None:
    instance, _ = make_instance(mock_model, S.BOOTING)
    assert instance_transition(instance=instance, to=S.STARTING, reason="agent registered")
    event = InstanceEvent.objects.get(instance=instance)
    assert (event.from_status, event.to_status, event.reason) == (
        S.BOOTING,
        S.STARTING,
        "agent registered",
    )


@pytest.mark.django_db(transaction=True)
def test_only_one_of_two_racing_transitions_wins(mock_model: LlmModel) -> None:
    instance, _ = make_instance(mock_model, S.READY)
    results: list[bool] = []
    barrier = threading.Barrier(2)

    def move(to: S) -> None:
        copy = Instance.objects.get(id=instance.id)
        barrier.wait()
        results.append(
            instance_transition(instance=copy, to=to, reason=f"race {to}", expected=S.READY)
        )
        connection.close()

    threads = [threading.Thread(target=move, args=(to,)) for to in (S.DRAINING, S.UNAVAILABLE)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert sorted(results) == [False, True]
    assert InstanceEvent.objects.filter(instance=instance).count() == 1


@pytest.mark.django_db(transaction=True)
def test_two_concurrent_reconcilers_never_create_a_duplicate_instance(
    mock_model: LlmModel,
) -> None:
    model_deploy(model=mock_model, replicas=3)
    barrier = threading.Barrier(4)

    def converge() -> None:
        barrier.wait()
        orchestrator.model_code_converge(model_code_id=mock_model.id)
        connection.close()

    threads = [threading.Thread(target=converge) for _ in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert mock_model.instances.count() == 3
    orchestrator.model_code_converge(model_code_id=mock_model.id)
    assert mock_model.instances.count() == 3


@pytest.mark.django_db
def test_a_second_reconciler_skips_while_the_lease_is_held(mock_model: LlmModel) -> None:
    holder = orchestrator._take_lease(orchestrator.RECONCILE_LOCK, 60)
    assert holder
    assert orchestrator.reconcile() == {"skipped": "another reconciler holds the lease"}
    orchestrator._release_lease(orchestrator.RECONCILE_LOCK, holder, {})
    assert "skipped" not in orchestrator.reconcile()


def _ready(model: LlmModel, heartbeat_age_s: float) -> Instance:
    instance, _ = make_instance(
        model, S.READY, last_heartbeat_at=timezone.now() - timedelta(seconds=heartbeat_age_s)
    )
    return instance


@pytest.mark.django_db
def test_an_instance_that_misses_heartbeats_becomes_unavailable_then_is_replaced(
    mock_model: LlmModel, settings: Any
) -> None:
    settings.HEARTBEAT_DEADLINE_S = 10
    settings.UNAVAILABLE_REPLACE_AFTER_S = 30
    healthy = [_ready(mock_model, 1) for _ in range(2)]
    silent = _ready(mock_model, 60)
    orchestrator.reconcile()
    silent.refresh_from_db()
    assert silent.status == S.UNAVAILABLE
    assert "no heartbeat" in silent.status_reason
    assert all(Instance.objects.get(id=i.id).status == S.READY for i in healthy)
    # When it stays unavailable past the replacement delay, it is terminated (and replaced)
    Instance.objects.filter(id=silent.id).update(
        status_changed_at=timezone.now() - timedelta(seconds=31)
    )
    orchestrator.reconcile()
    assert Instance.objects.get(id=silent.id).status == S.TERMINATING


@pytest.mark.django_db
def test_a_mass_loss_of_heartbeats_is_held_for_a_while_then_handled(
    mock_model: LlmModel, settings: Any
) -> None:
    # Given a fleet that goes silent all at once (our network, not theirs?)
    settings.HEARTBEAT_DEADLINE_S = 10
    settings.MASS_HEARTBEAT_LOSS_HOLD_S = 60
    fleet = [_ready(mock_model, 120) for _ in range(4)]
    # When the reconciler runs, then nothing is marked or terminated, and it says why
    summary = orchestrator.reconcile()
    assert summary["mass_heartbeat_loss"] == "4/4"
    assert {Instance.objects.get(id=i.id).status for i in fleet} == {S.READY}
    # When the loss outlasts the hold, then it is handled as real
    OrchestratorLock.objects.filter(name="mass-heartbeat-loss").update(
        last_run_at=timezone.now() - timedelta(seconds=61)
    )
    summary = orchestrator.reconcile()
    assert summary["marked_unavailable"] == 4
    assert {Instance.objects.get(id=i.id).status for i in fleet} == {S.UNAVAILABLE}


@pytest.mark.django_db
def test_instances_already_unavailable_do_not_count_towards_a_mass_loss(
    mock_model: LlmModel, settings: Any
) -> None:
    # Given two instances already unavailable and two healthy ones
    settings.HEARTBEAT_DEADLINE_S = 10
    settings.UNAVAILABLE_REPLACE_AFTER_S = 30
    dead = [_ready(mock_model, 120) for _ in range(2)]
    Instance.objects.filter(id__in=[i.id for i in dead]).update(
        status=S.UNAVAILABLE, status_changed_at=timezone.now() - timedelta(seconds=31)
    )
    healthy = [_ready(mock_model, 1) for _ in range(2)]
    # When the reconciler runs, then the dead ones are replaced (no freeze)
    summary = orchestrator.reconcile()
    assert "mass_heartbeat_loss" not in summary
    assert summary["replaced_unavailable"] == 2
    assert {Instance.objects.get(id=i.id).status for i in healthy} == {S.READY}


@pytest.mark.django_db
def test_a_machine_that_never_registers_fails_and_is_cleaned_up(
    mock_model: LlmModel, settings: Any
) -> None:
    settings.BOOT_DEADLINE_S = 60
    instance, _ = make_instance(mock_model, S.BOOTING, age_s=61)
    orchestrator.reconcile()
    instance.refresh_from_db()
    assert instance.status == S.TERMINATING
    assert instance.failure_reason == "the agent did not register within 60s"
    statuses = list(instance.events.values_list("to_status", flat=True))
    assert statuses == [S.STARTUP_FAILED, S.TERMINATING]


@pytest.mark.django_db
def test_an_engine_never_ready_fails_at_the_startup_deadline(
    mock_model: LlmModel, settings: Any
) -> None:
    settings.STARTUP_DEADLINE_S = 100
    instance, _ = make_instance(mock_model, S.STARTING, age_s=101, last_heartbeat_at=timezone.now())
    orchestrator.reconcile()
    instance.refresh_from_db()
    assert instance.status == S.TERMINATING
    assert "not ready within 100s" in instance.failure_reason


@pytest.mark.django_db
def test_replacements_back_off_after_consecutive_failures(
    mock_model: LlmModel, settings: Any
) -> None:
    settings.REPLACEMENT_BACKOFF_S = 30
    model_deploy(model=mock_model, replicas=1)
    make_instance(mock_model, S.TERMINATED, failure_reason="boom")
    result = orchestrator.model_code_converge(model_code_id=mock_model.id)
    assert result.waiting_backoff and result.created == 0
    Instance.objects.update(status_changed_at=timezone.now() - timedelta(seconds=31))
    assert orchestrator.model_code_converge(model_code_id=mock_model.id).created == 1


@pytest.mark.django_db
def test_a_lost_provision_command_is_sent_again_and_bounded(
    mock_model: LlmModel, settings: Any, django_capture_on_commit_callbacks: Any
) -> None:
    settings.COMMAND_RESEND_AFTER_S = 5
    instance, _ = make_instance(mock_model, S.PROVISIONING)
    Instance.objects.filter(id=instance.id).update(
        command_sent_at=timezone.now() - timedelta(seconds=6)
    )
    with django_capture_on_commit_callbacks() as callbacks:
        assert orchestrator._resend_lost_commands() == {"commands_resent": 1}
    assert len(callbacks) == 1
    assert orchestrator._resend_lost_commands() == {"commands_resent": 0}
    Instance.objects.filter(id=instance.id).update(
        command_sent_at=timezone.now() - timedelta(seconds=6),
        provision_attempts=orchestrator.MAX_PROVISION_COMMANDS,
    )
    orchestrator._resend_lost_commands()
    instance.refresh_from_db()
    assert instance.status == S.TERMINATING
    assert "did not complete" in instance.failure_reason


@pytest.mark.django_db
def test_the_cluster_status_counts_instances(mock_model: LlmModel, staff: Any) -> None:
    _ready(mock_model, 0)
    make_instance(mock_model, S.BOOTING)
    status = orchestrator.cluster_status()
    assert status["instances_by_status"] == {"ready": 1, "booting": 1}
    assert status["instances_by_provider"] == {"local": {"ready": 1, "booting": 1}}
    assert isinstance(status["queue_depth"], int)
    assert Provider.objects.count() == 1


@pytest.mark.django_db
def test_local_engine_ports_avoid_live_instances_and_the_ephemeral_range(
    mock_model: LlmModel, monkeypatch: pytest.MonkeyPatch
) -> None:
    from apps.instances import services

    make_instance(mock_model, S.READY, engine_port=25000)  # holds 25000
    make_instance(mock_model, S.TERMINATED, engine_port=25001)  # released: may be reused
    monkeypatch.setattr(services, "LOCAL_PORT_RANGE", (25000, 25002))
    assert {services._free_local_port() for _ in range(20)} == {25001}
    monkeypatch.setattr(services, "LOCAL_PORT_RANGE", (20000, 32000))
    assert all(20000 <= services._free_local_port() < 32000 for _ in range(20))


@pytest.mark.django_db
def test_missed_heartbeats_during_an_operators_power_action_are_expected(
    mock_model: LlmModel, settings: Any
) -> None:
    # Given a machine an operator is rebooting (silent, within the grace period)
    settings.HEARTBEAT_DEADLINE_S = 10
    rebooting = _ready(mock_model, 120)
    Instance.objects.filter(id=rebooting.id).update(
        maintenance_until=timezone.now() + timedelta(seconds=60)
    )
    healthy = [_ready(mock_model, 1) for _ in range(2)]
    # When the reconciler runs, then it stays ready
    orchestrator.reconcile()
    assert Instance.objects.get(id=rebooting.id).status == S.READY
    # When the grace period is over and it is still silent, then it is unavailable
    Instance.objects.filter(id=rebooting.id).update(
        maintenance_until=timezone.now() - timedelta(seconds=1)
    )
    orchestrator.reconcile()
    assert Instance.objects.get(id=rebooting.id).status == S.UNAVAILABLE
    assert {Instance.objects.get(id=i.id).status for i in healthy} == {S.READY}

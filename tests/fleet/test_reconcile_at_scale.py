"""The reconciler at fleet scale (issue 19): work proportional to change, not to the fleet.

Given converged model codes, a pass costs the same number of queries whatever their number;
silent instances are selected in SQL and confirmed against their heartbeat leases; the work of
one pass is bounded."""

from __future__ import annotations

import importlib
import time
from datetime import timedelta
from typing import Any

import pytest
from django.core.cache import cache
from django.db import connection
from django.test.utils import CaptureQueriesContext
from django.utils import timezone

from apps.accounts.models import Organization
from apps.instances.choices import InstanceStatus as S
from apps.instances.models import Instance
from apps.instances.orchestrator.reconcile import reconcile
from apps.instances.selectors import heartbeat_lease_key
from apps.models.choices import Engine, ModelStatus
from apps.models.models import LlmModel
from apps.models.services import model_create
from tests.instances.factories import make_instance

pytestmark = pytest.mark.django_db
# The module (the package exports its function under the same name).
reconcile_module = importlib.import_module("apps.instances.orchestrator.reconcile")


def _converged_model_codes(org: Organization, count: int, *, start: int = 0) -> list[LlmModel]:
    """``count`` active model codes of one replica each, each with its ready, beating instance."""
    models = []
    for n in range(start, start + count):
        model = model_create(
            organization=org,
            name=f"bot-{n}",
            engine=Engine.MOCK,
            model_id="meta-llama/Llama-3.1-8B-Instruct",
            gpu_count=0,
        )
        LlmModel.objects.filter(id=model.id).update(status=ModelStatus.ACTIVE, desired_replicas=1)
        make_instance(model, S.READY, last_heartbeat_at=timezone.now())
        models.append(model)
    return models


def _queries_of_a_pass() -> list[str]:
    with CaptureQueriesContext(connection) as captured:
        summary = reconcile()
    assert "skipped" not in summary
    return [q["sql"] for q in captured.captured_queries]


def test_it_costs_the_same_queries_for_2_or_30_converged_model_codes(
    owner_org: Organization, local_provider: Any
) -> None:
    # Given two converged model codes
    _converged_model_codes(owner_org, 2)
    reconcile()  # first pass: the lease rows exist from now on
    small = _queries_of_a_pass()
    # When 28 more converged model codes join
    _converged_model_codes(owner_org, 28, start=2)
    large = _queries_of_a_pass()
    # Then a pass costs exactly the same queries, and no instance or model code changed
    assert len(large) == len(small), "\n".join(large)
    assert len(small) <= 16, "\n".join(small)
    assert not any("FOR UPDATE" in q for q in large), "a converged model code was locked"
    assert Instance.objects.filter(status=S.READY).count() == 30
    assert LlmModel.objects.filter(status=ModelStatus.ACTIVE).count() == 30


def test_it_converges_only_the_model_code_that_needs_it(
    owner_org: Organization, local_provider: Any
) -> None:
    # Given converged model codes and one whose desired replicas went to 2
    models = _converged_model_codes(owner_org, 5)
    LlmModel.objects.filter(id=models[3].id).update(
        desired_replicas=2, min_replicas=2, max_replicas=2
    )
    # When a pass runs
    summary = reconcile()
    # Then that one got its second instance, and only that one
    assert summary["created"] == 1
    assert models[3].instances.filter(status=S.PROVISIONING).count() == 1
    assert Instance.objects.filter(status=S.PROVISIONING).count() == 1


def test_a_recorded_beat_past_the_deadline_with_a_fresh_lease_is_alive(
    owner_org: Organization, local_provider: Any, settings: Any
) -> None:
    # Given three instances whose recorded beat is past the deadline: one renewed its lease
    # since (the database is written only every few seconds), two are silent
    settings.HEARTBEAT_DEADLINE_S = 10
    settings.MASS_HEARTBEAT_LOSS_RATIO = 2.0  # not a mass loss: a test of which are silent
    old = timezone.now() - timedelta(seconds=60)
    (model,) = _converged_model_codes(owner_org, 1)
    LlmModel.objects.filter(id=model.id).update(desired_replicas=4, min_replicas=4, max_replicas=4)
    for _ in range(3):
        make_instance(model, S.READY, last_heartbeat_at=old)
    renewed, *silent = Instance.objects.filter(last_heartbeat_at=old).order_by("id")
    cache.set(heartbeat_lease_key(renewed.id), time.time(), 60)
    cache.set(heartbeat_lease_key(silent[0].id), time.time() - 30, 60)  # an old lease
    # When a pass runs
    summary = reconcile()
    # Then only the silent ones are unavailable
    assert summary["marked_unavailable"] == 2
    assert Instance.objects.get(id=renewed.id).status == S.READY
    assert {i.status for i in Instance.objects.filter(id__in=[i.id for i in silent])} == {
        S.UNAVAILABLE
    }


def test_it_moves_a_bounded_number_of_instances_per_pass(
    owner_org: Organization, local_provider: Any, settings: Any, monkeypatch: Any
) -> None:
    # Given 5 silent instances of a fleet of 10, a bound of 2 per pass, the mass-loss hold off
    settings.HEARTBEAT_DEADLINE_S = 10
    settings.MASS_HEARTBEAT_LOSS_RATIO = 2.0
    monkeypatch.setattr(reconcile_module, "MAX_ACTIONS_PER_PASS", 2)
    models = _converged_model_codes(owner_org, 10)
    Instance.objects.filter(llm_model__in=models[:5]).update(
        last_heartbeat_at=timezone.now() - timedelta(seconds=60)
    )
    # When passes run, then each marks at most 2, and all 5 within 3 passes
    marked = [reconcile()["marked_unavailable"] for _ in range(3)]
    assert marked == [2, 2, 1]
    assert Instance.objects.filter(status=S.UNAVAILABLE).count() == 5


def test_a_mass_loss_is_counted_in_sql_and_held(
    owner_org: Organization, local_provider: Any, settings: Any
) -> None:
    # Given 4 of 5 serving instances silent at once (the control plane's own network, likely)
    settings.HEARTBEAT_DEADLINE_S = 10
    models = _converged_model_codes(owner_org, 5)
    Instance.objects.filter(llm_model__in=models[:4]).update(
        last_heartbeat_at=timezone.now() - timedelta(seconds=60)
    )
    # When a pass runs, then nothing is marked: the loss is held
    assert reconcile()["mass_heartbeat_loss"] == "4/5"
    assert not Instance.objects.filter(status=S.UNAVAILABLE).exists()

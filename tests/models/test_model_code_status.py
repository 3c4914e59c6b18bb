"""A model code's status: one transition table, one compare-and-set, a history row per change
(who, from, to, why) and ``EVENT:MODEL_<STATUS>`` after commit."""

from __future__ import annotations

import threading
from typing import Any

import pytest
from django.db import IntegrityError, connection, transaction
from rest_framework.test import APIClient

from apps.accounts.models import Organization, User
from apps.instances.models import Provider
from apps.instances.orchestrator import model_code_finish_decommission
from apps.models.choices import MODEL_TRANSITIONS, ModelStatus
from apps.models.models import LlmModel, ModelCodeEvent
from apps.models.services import model_codes as services  # model_transition publishes there
from apps.models.services import model_create, model_transition

M = ModelStatus
VALID = {"name": "sales-bot", "engine": "mock", "model_id": "org/model", "gpu_count": 0}


@pytest.fixture
def published(monkeypatch: pytest.MonkeyPatch) -> list[tuple[list[str], str, dict[str, Any]]]:
    sent: list[tuple[list[str], str, dict[str, Any]]] = []

    def record(groups: Any, event: str, data: Any) -> None:
        transaction.on_commit(lambda: sent.append((list(groups), event, dict(data))))

    monkeypatch.setattr(services, "publish_on_commit", record)
    return sent


@pytest.fixture
def model_code(owner_org: Organization) -> LlmModel:
    return model_create(organization=owner_org, **VALID)


def history(model: LlmModel) -> list[tuple[str, str, str]]:
    return list(
        ModelCodeEvent.objects.filter(model_code=model).values_list(
            "from_status", "to_status", "actor"
        )
    )


@pytest.mark.django_db
def test_every_status_has_a_row_in_the_transition_table() -> None:
    assert set(MODEL_TRANSITIONS) == set(ModelStatus)
    assert MODEL_TRANSITIONS[M.DECOMMISSIONED] == frozenset()


@pytest.mark.django_db
def test_it_records_who_deployed_and_decommissioned_and_publishes_after_commit(
    api: APIClient,
    owner: User,
    published: list[tuple[list[str], str, dict[str, Any]]],
    django_capture_on_commit_callbacks: Any,
) -> None:
    # given
    Provider.objects.create(name="local", kind="local")
    model_id = api.post("/api/v1/model-codes/", VALID).json()["id"]
    # when
    with django_capture_on_commit_callbacks(execute=True):
        api.post(f"/api/v1/model-codes/{model_id}/deploy/", {"replicas": 2})
        api.post(f"/api/v1/model-codes/{model_id}/decommission/")
    # then
    model = LlmModel.objects.get(id=model_id)
    assert history(model) == [
        (M.DRAFT, M.DEPLOYING, owner.email),
        (M.DEPLOYING, M.DECOMMISSIONING, owner.email),
    ]
    events = [(event, data["status"], data["from_status"]) for _, event, data in published]
    assert events == [
        ("EVENT:MODEL_DEPLOYING", "deploying", "draft"),
        ("EVENT:MODEL_DECOMMISSIONING", "decommissioning", "deploying"),
    ]
    groups, _, data = published[0]
    assert groups == [f"org.{model.organization_id}", "instances", "staff"]
    assert (data["model_code_id"], data["model_code"], data["by"]) == (
        model.id,
        "sales-bot",
        owner.email,
    )
    # and the orchestrator finishes the decommission, in its own name
    assert model_code_finish_decommission(model_code_id=model.id)
    assert history(model)[-1] == (M.DECOMMISSIONING, M.DECOMMISSIONED, "orchestrator")


@pytest.mark.django_db
def test_it_refuses_a_transition_the_table_does_not_allow(model_code: LlmModel) -> None:
    assert not model_transition(model=model_code, to=M.ACTIVE, reason="skipping deploying")
    assert not model_transition(model=model_code, to=M.DECOMMISSIONED, reason="too early")
    model_code.refresh_from_db()
    assert model_code.status == M.DRAFT
    assert history(model_code) == []


@pytest.mark.django_db
def test_a_stale_expected_status_loses_without_writing(model_code: LlmModel) -> None:
    assert model_transition(model=model_code, to=M.DEPLOYING, reason="deploy")
    # a writer that still believes the model code is a draft loses the compare-and-set
    stale = LlmModel.objects.get(id=model_code.id)
    assert not model_transition(
        model=stale, to=M.DEPLOYING, reason="deploy again", expected=M.DRAFT
    )
    assert len(history(model_code)) == 1


@pytest.mark.django_db(transaction=True)
def test_only_one_of_two_racing_model_transitions_wins(owner_org: Organization) -> None:
    model = model_create(organization=owner_org, **VALID)
    assert model_transition(model=model, to=M.DEPLOYING, reason="deploy")
    results: list[bool] = []
    barrier = threading.Barrier(2)

    def move(to: ModelStatus) -> None:
        copy = LlmModel.objects.get(id=model.id)
        barrier.wait()
        results.append(
            model_transition(model=copy, to=to, reason=f"race {to}", expected=M.DEPLOYING)
        )
        connection.close()

    threads = [threading.Thread(target=move, args=(to,)) for to in (M.ACTIVE, M.DECOMMISSIONING)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert sorted(results) == [False, True]
    assert ModelCodeEvent.objects.filter(model_code=model).count() == 2


@pytest.mark.django_db
def test_the_database_refuses_a_status_outside_the_choices(model_code: LlmModel) -> None:
    with pytest.raises(IntegrityError), transaction.atomic():
        LlmModel.objects.filter(id=model_code.id).update(status="paused")

"""Instances through the REST API: tenancy, history, operator actions, cluster status."""

from __future__ import annotations

from typing import Any

import pytest
from django.db import connection
from django.test.utils import CaptureQueriesContext
from rest_framework.test import APIClient

from apps.accounts.choices import Role
from apps.accounts.models import Organization
from apps.accounts.services import membership_set, user_create
from apps.instances.choices import InstanceStatus as S
from apps.instances.models import Instance
from apps.instances.services import instance_transition
from apps.models.models import LlmModel
from tests.instances.factories import make_instance

pytestmark = pytest.mark.django_db


def test_it_lists_and_details_my_instances_with_their_history(
    api: APIClient, mock_model: LlmModel
) -> None:
    instance, _ = make_instance(mock_model, S.BOOTING)
    instance_transition(instance=instance, to=S.STARTING, reason="agent registered")
    listed = api.get("/api/v1/instances/").json()["results"]
    assert [i["id"] for i in listed] == [str(instance.id)]
    assert listed[0]["model_code"] == "sales-bot"
    detail = api.get(f"/api/v1/instances/{instance.id}/").json()
    assert [(e["from_status"], e["to_status"], e["reason"]) for e in detail["events"]] == [
        ("booting", "starting", "agent registered")
    ]
    assert "engine_secret_encrypted" not in detail and "credential_hash" not in detail
    filtered = api.get(f"/api/v1/instances/?status=ready&model_code={mock_model.id}")
    assert filtered.json()["results"] == []


def test_a_stranger_gets_the_same_404_for_my_instance_and_a_missing_one(
    stranger_api: APIClient, mock_model: LlmModel
) -> None:
    instance, _ = make_instance(mock_model, S.READY)
    mine = stranger_api.get(f"/api/v1/instances/{instance.id}/")
    missing = stranger_api.get("/api/v1/instances/00000000-0000-0000-0000-000000000000/")
    malformed = stranger_api.get("/api/v1/instances/not-a-uuid/")
    assert mine.status_code == missing.status_code == malformed.status_code == 404
    assert mine.json() == missing.json()
    assert stranger_api.post(f"/api/v1/instances/{instance.id}/terminate/").status_code == 404
    assert stranger_api.get("/api/v1/instances/").json()["results"] == []


def test_drain_and_terminate_go_through_the_state_machine(
    api: APIClient, mock_model: LlmModel
) -> None:
    ready, _ = make_instance(mock_model, S.READY)
    booting, _ = make_instance(mock_model, S.BOOTING)
    drained = api.post(f"/api/v1/instances/{ready.id}/drain/")
    assert drained.status_code == 202 and drained.json()["status"] == "draining"
    # Not yet serving: draining means terminating at once
    assert api.post(f"/api/v1/instances/{booting.id}/drain/").json()["status"] == "terminating"
    terminated = api.post(f"/api/v1/instances/{ready.id}/terminate/")
    assert terminated.json()["status"] == "terminating"
    assert api.post(f"/api/v1/instances/{ready.id}/terminate/").status_code == 202  # idempotent
    Instance.objects.filter(id=ready.id).update(status=S.TERMINATED)
    again = api.post(f"/api/v1/instances/{ready.id}/drain/")
    assert again.status_code == 409
    assert again.json()["error"]["code"] == "conflict"


def test_a_member_cannot_drain_or_terminate(mock_model: LlmModel, owner_org: Organization) -> None:
    instance, _ = make_instance(mock_model, S.READY)
    member = user_create(email="mia@example.com", password="correct-horse-9")
    membership_set(organization=owner_org, user=member, role=Role.MEMBER)
    client = APIClient()
    client.force_authenticate(member)
    assert client.get(f"/api/v1/instances/{instance.id}/").status_code == 200
    assert client.post(f"/api/v1/instances/{instance.id}/terminate/").status_code == 403
    assert Instance.objects.get(id=instance.id).status == S.READY


def test_the_cluster_status_is_for_staff_only(
    api: APIClient, staff: Any, mock_model: LlmModel
) -> None:
    make_instance(mock_model, S.READY)
    assert api.get("/api/v1/admin/status/").status_code == 403
    client = APIClient()
    client.force_authenticate(staff)
    status = client.get("/api/v1/admin/status/").json()
    assert status["instances_by_status"] == {"ready": 1}
    assert status["instances_by_model_code"] == {
        f"{mock_model.organization.slug}/sales-bot": {"ready": 1}
    }


def test_listing_instances_costs_a_constant_number_of_queries(
    api: APIClient, mock_model: LlmModel
) -> None:
    make_instance(mock_model, S.READY)
    with CaptureQueriesContext(connection) as one:
        api.get("/api/v1/instances/")
    for _ in range(5):
        make_instance(mock_model, S.READY)
    with CaptureQueriesContext(connection) as six:
        assert len(api.get("/api/v1/instances/").json()["results"]) == 6
    assert len(six) == len(one)

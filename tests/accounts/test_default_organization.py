"""The default organization of a create is the user's own personal organization, whatever
other organizations (even someone else's personal one) they were added to."""

from __future__ import annotations

from typing import Any

import pytest
from rest_framework.test import APIClient

from apps.accounts.choices import Role
from apps.accounts.models import Organization, User
from apps.accounts.selectors import organization_get_for_user
from apps.accounts.services import membership_set, organization_ensure_personal, user_create
from apps.models.models import LlmModel
from inventiv.errors import NotFound

pytestmark = pytest.mark.django_db

VALID = {"name": "sales-bot", "engine": "mock", "model_id": "org/model", "gpu_count": 0}


def client_for(user: User) -> APIClient:
    client = APIClient()
    client.force_authenticate(user)
    return client


@pytest.mark.parametrize("role", [Role.MEMBER, Role.ADMIN, Role.OWNER])
def test_a_teammate_in_the_owners_personal_organization_creates_in_their_own(
    owner: User, owner_org: Organization, stranger: User, role: Role
) -> None:
    # given Tom, added to Olivia's personal organization (created before his)
    teammate = user_create(email="tom@example.com", password="correct-horse-9")
    membership_set(organization=owner_org, user=teammate, role=role)
    toms = Organization.objects.get(personal_user=teammate)
    assert owner_org.id < toms.id

    # when each persona creates a model code and an API key without naming an organization
    for user, expected in [(owner, owner_org), (teammate, toms)]:
        client = client_for(user)
        created = client.post("/api/v1/model-codes/", VALID, format="json")
        assert created.status_code == 201, created.json()
        # then it lands in their own personal organization
        assert created.json()["organization"] == expected.slug
        key = client.post("/api/v1/api-keys/", {"name": "k"}, format="json")
        assert key.status_code == 201, key.json()
        assert key.json()["organization"] == expected.slug
    strangers = client_for(stranger).post("/api/v1/model-codes/", VALID, format="json")
    assert strangers.json()["organization"] == Organization.objects.get(personal_user=stranger).slug
    assert LlmModel.objects.filter(organization=owner_org).count() == 1

    # and the teammate still reaches the shared organization by naming it
    named = client_for(teammate).post(
        "/api/v1/model-codes/",
        {**VALID, "name": "team-bot", "organization": owner_org.slug},
        format="json",
    )
    assert named.status_code == (403 if role == Role.MEMBER else 201)


def test_the_personal_organization_is_the_users_own_even_as_owner_elsewhere(
    owner: User, owner_org: Organization
) -> None:
    teammate = user_create(email="tom@example.com", password="correct-horse-9")
    membership_set(organization=owner_org, user=teammate, role=Role.OWNER)
    assert organization_ensure_personal(user=teammate) == Organization.objects.get(
        personal_user=teammate
    )
    assert organization_ensure_personal(user=owner) == owner_org
    assert organization_get_for_user(user=teammate, slug=None).personal_user == teammate


def test_a_user_without_a_personal_organization_is_asked_to_name_one(
    owner_org: Organization,
) -> None:
    # a user made outside the services (e.g. manage.py createsuperuser), added to a team
    bare = User.objects.create_user(email="bare@example.com", password="correct-horse-9")
    membership_set(organization=owner_org, user=bare, role=Role.ADMIN)
    with pytest.raises(NotFound) as raised:
        organization_get_for_user(user=bare, slug=None)
    assert raised.value.param == "organization"
    response: Any = client_for(bare).post("/api/v1/model-codes/", VALID, format="json")
    assert response.status_code == 404
    assert response.json()["error"]["param"] == "organization"
    assert not LlmModel.objects.exists()

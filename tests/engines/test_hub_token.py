"""An organization's Hugging Face token: stored encrypted, write-only in REST and the admin,
handed to its agents only in the authenticated desired state."""

from __future__ import annotations

from typing import Any

import pytest
from django.test import Client
from rest_framework.test import APIClient

from apps.accounts.models import Organization, User
from apps.instances.choices import InstanceStatus as S
from apps.models.models import HubToken, LlmModel
from inventiv import crypto
from tests.instances.factories import make_instance
from tests.instances.test_agent_api import heartbeat, register

pytestmark = pytest.mark.django_db

TOKEN = "hf_GatedModelSecret0123456789"


def _url(org: Organization) -> str:
    return f"/api/v1/organizations/{org.slug}/hugging-face-token/"


def test_it_stores_the_token_encrypted_and_never_shows_it(
    api: APIClient, owner_org: Organization
) -> None:
    # given no token
    assert api.get(_url(owner_org)).json() == {"configured": False, "hint": "", "updated_at": None}
    # when the owner sets one
    response = api.put(_url(owner_org), {"token": TOKEN}, format="json")
    # then it is stored encrypted and the answers only say it is set
    assert response.status_code == 200, response.content
    assert TOKEN not in response.content.decode()
    shown = api.get(_url(owner_org))
    assert TOKEN not in shown.content.decode()
    assert shown.json()["configured"] is True and shown.json()["hint"] == "6789"
    stored = HubToken.objects.get(organization=owner_org)
    assert TOKEN not in stored.token_encrypted
    assert crypto.decrypt(stored.token_encrypted) == TOKEN
    # and DELETE forgets it
    assert api.delete(_url(owner_org)).status_code == 204
    assert not HubToken.objects.filter(organization=owner_org).exists()


@pytest.mark.parametrize("bad", ["", "hf_with space", "hf_\x00nul", "x" * 257, 42])
def test_it_refuses_a_token_that_cannot_be_one(
    api: APIClient, owner_org: Organization, bad: Any
) -> None:
    response = api.put(_url(owner_org), {"token": bad}, format="json")
    assert response.status_code == 400
    assert response.json()["error"]["param"] == "token"
    assert not HubToken.objects.exists()


def test_a_stranger_can_neither_read_nor_set_it(
    stranger_api: APIClient, owner_org: Organization
) -> None:
    assert stranger_api.get(_url(owner_org)).status_code == 404
    assert stranger_api.put(_url(owner_org), {"token": TOKEN}, format="json").status_code == 404
    assert not HubToken.objects.exists()


def test_the_agent_receives_it_in_the_authenticated_desired_state_only(
    client: Client, api: APIClient, owner_org: Organization, mock_model: LlmModel
) -> None:
    api.put(_url(owner_org), {"token": TOKEN}, format="json")
    instance, bootstrap = make_instance(mock_model, S.BOOTING)
    registered = register(client, bootstrap).json()
    assert registered["desired"]["engine"]["hf_token"] == TOKEN
    answer = heartbeat(client, registered["credential"], str(instance.id), "starting")
    assert answer.json()["desired"]["engine"]["hf_token"] == TOKEN
    # a wrong credential learns nothing
    refused = heartbeat(client, "ivc_wrong", str(instance.id), "starting")
    assert refused.status_code == 401 and TOKEN not in refused.content.decode()


def test_the_admin_is_write_only(owner_org: Organization, staff: User) -> None:
    admin = Client()
    admin.force_login(staff)
    added = admin.post(
        "/admin/llm_models/hubtoken/add/", {"organization": owner_org.id, "token": TOKEN}
    )
    assert added.status_code == 302, added.content.decode()[:2000]
    stored = HubToken.objects.get(organization=owner_org)
    assert crypto.decrypt(stored.token_encrypted) == TOKEN
    page = admin.get(f"/admin/llm_models/hubtoken/{stored.pk}/change/")
    assert page.status_code == 200
    assert TOKEN not in page.content.decode()
    assert stored.token_encrypted not in page.content.decode()

"""The audit trail is written by the services that change keys, deployments and scaling,
prices and budgets and provider credentials: who, from where, what."""

from __future__ import annotations

from datetime import timedelta

import pytest
from django.utils import timezone
from rest_framework.test import APIClient

from apps.accounts.models import AuditEntry, Organization, User
from apps.billing.services.budgets import budget_delete, budget_set
from apps.billing.services.prices import price_set
from apps.instances.choices import ProviderKind
from apps.instances.models import Provider
from apps.instances.providers.credentials import provider_set_credentials
from apps.models.models import LlmModel

pytestmark = pytest.mark.django_db

MODEL = {"name": "audited", "engine": "mock", "model_id": "org/model", "gpu_count": 0}


def test_keys_and_deployments_are_audited_with_actor_and_address(
    owner: User, owner_org: Organization
) -> None:
    Provider.objects.get_or_create(kind=ProviderKind.LOCAL, defaults={"name": "local"})
    api = APIClient(REMOTE_ADDR="203.0.113.7", HTTP_USER_AGENT="audit-test/1")
    api.force_authenticate(owner)
    model = api.post("/api/v1/model-codes/", MODEL, format="json").json()
    key = api.post("/api/v1/api-keys/", {"name": "ci", "model_codes": [model["id"]]}, format="json")
    assert key.status_code == 201, key.json()
    assert api.post(f"/api/v1/api-keys/{key.json()['id']}/rotate/").status_code == 201
    deployed = api.post(
        f"/api/v1/model-codes/{model['id']}/deploy/", {"replicas": 1}, format="json"
    )
    assert deployed.status_code == 202, deployed.json()
    assert (
        api.post(
            f"/api/v1/model-codes/{model['id']}/replicas/", {"replicas": 2}, format="json"
        ).status_code
        == 202
    )
    assert api.post(f"/api/v1/model-codes/{model['id']}/decommission/").status_code == 202

    entries = list(AuditEntry.objects.filter(organization_id=owner_org.pk).order_by("id"))
    actions = [e.action for e in entries]
    for expected in [
        "api_key.create",
        "api_key.rotate",
        "api_key.revoke",
        "model_code.deploy",
        "model_code.replicas",
        "model_code.decommission",
    ]:
        assert expected in actions, actions
    for entry in entries:
        if entry.action.startswith(("api_key.", "model_code.")):
            assert (entry.actor_email, entry.ip, entry.user_agent) == (
                owner.email,
                "203.0.113.7",
                "audit-test/1",
            ), entry.action
    replicas = next(e for e in entries if e.action == "model_code.replicas")
    assert replicas.data == {"from": 1, "to": 2}


def test_prices_budgets_and_credentials_are_audited(owner: User, owner_org: Organization) -> None:
    local, _ = Provider.objects.get_or_create(kind=ProviderKind.LOCAL, defaults={"name": "local"})
    model = LlmModel.objects.create(organization=owner_org, name="priced", model_id="o/m")
    price_set(
        model_code=model,
        currency="EUR",
        input_per_million="1.5",
        output_per_million="3",
        valid_from=timezone.now() + timedelta(hours=1),
    )
    budget = budget_set(organization=owner_org, currency="EUR", monthly_limit="100")
    budget_delete(budget=budget)
    provider_set_credentials(provider=local, credentials={"token": "s3cret-value"})
    rows = list(AuditEntry.objects.order_by("id").values_list("action", "organization_id", "data"))
    by_action = {a: (org, data) for a, org, data in rows}
    assert by_action["price.set"][0] == owner_org.pk
    assert by_action["price.set"][1]["input_per_million"] == "1.500000" or by_action["price.set"][
        1
    ]["input_per_million"].startswith("1.5")
    assert by_action["budget.set"] == (
        owner_org.pk,
        {"api_key": None, "currency": "EUR", "monthly_limit": "100", "warn_at_percent": 80},
    )
    assert "budget.delete" in by_action
    assert by_action["provider.credentials"] == (None, {"keys": ["token"]})
    assert "s3cret-value" not in str(rows)

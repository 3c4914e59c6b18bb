"""API keys in the admin: limits edited in place go through the service, which audits the change
and tells every gateway to re-read the key."""

from __future__ import annotations

from typing import Any

import pytest
from django.test import Client

from apps.accounts.models import AuditEntry, Organization
from apps.gateway import services
from apps.gateway.listener import EventListener
from apps.gateway.models import ApiKey
from apps.gateway.services import api_key_create
from inventiv.events import KEY_CHANGED

pytestmark = pytest.mark.django_db


@pytest.fixture
def published(monkeypatch: pytest.MonkeyPatch) -> list[tuple[str, dict[str, Any]]]:
    sent: list[tuple[str, dict[str, Any]]] = []
    monkeypatch.setattr(
        services, "publish_on_commit", lambda groups, event, data: sent.append((event, dict(data)))
    )
    return sent


def edit_limits(client: Client, key: ApiKey, **limits: str) -> Any:
    form = {
        "form-TOTAL_FORMS": "1",
        "form-INITIAL_FORMS": "1",
        "form-0-id": str(key.pk),
        "form-0-rpm_limit": "",
        "form-0-tpm_limit": "",
        "form-0-concurrency_limit": "",
        "_save": "Save",
    }
    form.update({f"form-0-{name}": value for name, value in limits.items()})
    return client.post("/admin/gateway/apikey/", form)


def test_an_operator_changes_a_keys_limits_in_place_and_gateways_are_told(
    owner_org: Organization, staff: Any, client: Client, published: list[Any]
) -> None:
    # given
    key, _ = api_key_create(organization=owner_org, name="ci", rpm_limit=10)
    client.force_login(staff)
    # when
    response = edit_limits(client, key, rpm_limit="60", tpm_limit="5000")
    # then
    assert response.status_code == 302
    key.refresh_from_db()
    assert (key.rpm_limit, key.tpm_limit, key.concurrency_limit) == (60, 5000, None)
    assert [(event, data["lookup_id"]) for event, data in published] == [
        (KEY_CHANGED, key.lookup_id)
    ]
    entry = AuditEntry.objects.filter(action="api_key.limits").get()
    assert entry.data == {"rpm_limit": 60, "tpm_limit": 5000, "concurrency_limit": None}


def test_a_limit_out_of_range_is_refused_and_changes_nothing(
    owner_org: Organization, staff: Any, client: Client, published: list[Any]
) -> None:
    key, _ = api_key_create(organization=owner_org, name="ci", rpm_limit=10)
    client.force_login(staff)
    response = edit_limits(client, key, rpm_limit="0")
    assert response.status_code == 302
    key.refresh_from_db()
    assert key.rpm_limit == 10
    assert published == []


def test_the_admin_creates_no_key_and_never_shows_the_secret_hash(
    owner_org: Organization, staff: Any, client: Client
) -> None:
    key, _ = api_key_create(organization=owner_org, name="ci")
    client.force_login(staff)
    assert client.get("/admin/gateway/apikey/add/").status_code == 403
    page = client.get(f"/admin/gateway/apikey/{key.pk}/change/")
    assert page.status_code == 200
    assert key.secret_hash not in page.content.decode()


def test_gateways_drop_a_changed_key_from_their_cache() -> None:
    dropped: list[str] = []

    class Keys:
        def invalidate(self, lookup_id: str) -> None:
            dropped.append(lookup_id)

    listener = EventListener(directory=None, keys=Keys())  # type: ignore[arg-type]
    listener.apply({"event": KEY_CHANGED, "data": {"lookup_id": "abc123"}})
    assert dropped == ["abc123"]

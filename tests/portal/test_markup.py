"""Every portal page keeps the CSP's rules in its markup and is usable from the keyboard and a
screen reader: no inline script without the response's nonce (JSON data blocks aside), no
``style`` attribute, no ``on*`` handler, and every visible form control has a label."""

from __future__ import annotations

from html.parser import HTMLParser
from typing import Any

import pytest
from django.test import Client
from django.utils import timezone

from apps.accounts.models import Organization, User
from apps.gateway.services import api_key_create
from apps.instances.choices import InstanceStatus, ProviderKind
from apps.instances.models import Instance, Provider
from apps.models.choices import Engine
from apps.models.services import model_create

pytestmark = pytest.mark.django_db


class _Page(HTMLParser):
    def __init__(self) -> None:
        super().__init__()
        self.tags: list[tuple[str, dict[str, str]]] = []
        self.labels_for: set[str] = set()
        self.inline_scripts: list[dict[str, str]] = []
        self._script: dict[str, str] | None = None
        self._label_depth = 0
        self.wrapped: list[str] = []

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        values = {k: v or "" for k, v in attrs}
        self.tags.append((tag, values))
        self._script = values if tag == "script" else None
        if tag == "label":
            self._label_depth += 1
            if "for" in values:
                self.labels_for.add(values["for"])
        elif tag in ("input", "select", "textarea") and self._label_depth:
            self.wrapped.append(values.get("id", ""))

    def handle_endtag(self, tag: str) -> None:
        if tag == "label":
            self._label_depth -= 1
        self._script = None

    def handle_data(self, data: str) -> None:
        if self._script is not None and data.strip() and "src" not in self._script:
            self.inline_scripts.append(self._script)


@pytest.fixture
def pages(owner: User, owner_org: Organization, settings: Any) -> tuple[Client, list[str]]:
    settings.LOCAL_PROVIDER_ENABLED = True
    local = Provider.objects.create(name="local", kind=ProviderKind.LOCAL)
    bot = model_create(
        organization=owner_org, name="bot", engine=Engine.MOCK, model_id="org/m", gpu_count=0
    )
    api_key_create(organization=owner_org, name="ci")
    instance = Instance.objects.create(
        organization=owner_org,
        llm_model=bot,
        provider=local,
        status=InstanceStatus.READY,
        status_changed_at=timezone.now(),
        engine_secret_encrypted="x",
    )
    client = Client()
    client.force_login(owner)
    paths = [
        "/",
        "/models/new/",
        f"/models/{bot.id}/",
        f"/instances/{instance.id}/",
        "/keys/",
        "/usage/",
        "/playground/",
        "/organization/",
        "/invitations/accept/?invitation=ivi_nothing",
    ]
    return client, paths


def test_every_page_keeps_the_csp_rules_and_labels_its_controls(
    pages: tuple[Client, list[str]],
) -> None:
    client, paths = pages
    for path in [*paths, "POST /keys/", "POST /models/new/offers/"]:
        if path.startswith("POST "):
            response = client.post(path[5:], {"name": "k", "engine": "mock", "gpu_count": 0})
        else:
            response = client.get(path)
        assert response.status_code in (200, 201), (path, response.status_code)
        policy = response.headers["Content-Security-Policy"]
        nonce = policy.split("'nonce-")[1].split("'")[0] if "'nonce-" in policy else None
        page = _Page()
        page.feed(response.content.decode())
        for attrs in page.inline_scripts:
            assert attrs.get("type") == "application/json" or attrs.get("nonce") == nonce, path
        for tag, attrs in page.tags:
            assert "style" not in attrs, (path, tag, attrs)
            assert not [a for a in attrs if a.startswith("on")], (path, tag, attrs)
            if tag in ("script", "link") and (attrs.get("src") or attrs.get("href", "")):
                url = attrs.get("src") or attrs["href"]
                assert not url.startswith(("http:", "https:", "//")), (path, url)
            if tag in ("input", "select", "textarea") and attrs.get("type") not in (
                "hidden",
                "submit",
                "radio",
            ):
                labelled = (
                    attrs.get("id") in page.labels_for
                    or attrs.get("id") in page.wrapped
                    or "aria-label" in attrs
                )
                assert labelled, (path, tag, attrs)


def test_radio_offers_are_labelled_too(pages: tuple[Client, list[str]]) -> None:
    client, _ = pages
    response = client.post(
        "/models/new/offers/",
        {"engine": "mock", "gpu_count": 0, "model_id": "a/b", "dtype": "auto"},
    )
    page = _Page()
    page.feed(response.content.decode())
    radios = [a for t, a in page.tags if t == "input" and a.get("type") == "radio"]
    assert radios and all(r["id"] in page.labels_for for r in radios)

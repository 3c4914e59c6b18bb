"""Working across organizations in the portal. A role is the role in the organization the
portal works in: someone who owns their own organization and is a plain member of another must
not manage the other's objects from it (a key rotated or revoked, a model code decommissioned, a
budget removed), whatever id they post. A password session whose default organization requires
single sign-on works in another of the user's organizations instead of being locked out, and the
organization switch never redirects off the site."""

from __future__ import annotations

from decimal import Decimal

import pytest
from django.test import Client

from apps.accounts.choices import Role
from apps.accounts.models import Organization, User
from apps.accounts.services import membership_set, user_create
from apps.billing.models import Budget
from apps.billing.services.budgets import budget_set
from apps.gateway.models import ApiKey
from apps.gateway.services import api_key_create
from apps.models.choices import Engine, ModelStatus
from apps.models.services import model_create

pytestmark = pytest.mark.django_db


def test_a_member_elsewhere_manages_nothing_of_that_organization_from_their_own(
    owner: User, owner_org: Organization
) -> None:
    # Given Max, owner of his personal organization (where he works) and a member of Olivia's
    max_ = user_create(email="max@example.com", password="correct-horse-9")
    membership_set(organization=owner_org, user=max_, role=Role.MEMBER)
    mine = Organization.objects.get(
        memberships__user=max_, memberships__role=Role.OWNER, personal=True
    )
    max_.default_organization = mine
    max_.save()
    key, _ = api_key_create(organization=owner_org, name="ci")
    bot = model_create(
        organization=owner_org,
        name="sales-bot",
        engine=Engine.MOCK,
        model_id="meta-llama/Llama-3.1-8B-Instruct",
        gpu_count=0,
    )
    budget = budget_set(organization=owner_org, currency="EUR", monthly_limit=Decimal("10"))
    browser = Client()
    browser.force_login(max_)

    for path in [
        f"/keys/{key.id}/rotate/",
        f"/keys/{key.id}/revoke/",
        f"/keys/{key.id}/limits/",
        f"/models/{bot.id}/decommission/",
        f"/usage/budgets/{budget.id}/delete/",
    ]:
        assert browser.post(path).status_code == 404, path
    assert browser.get(f"/models/{bot.id}/").status_code == 404
    # and nothing changed: no new secret, the key live, the model code and the budget kept
    key.refresh_from_db()
    bot.refresh_from_db()
    assert key.revoked_at is None and not ApiKey.objects.filter(rotated_from=key).exists()
    assert bot.status == ModelStatus.DRAFT
    assert Budget.objects.filter(id=budget.id).exists()

    # Once he works in Olivia's organization his member role applies there (403, not 404)
    max_.default_organization = owner_org
    max_.save()
    assert browser.post(f"/keys/{key.id}/rotate/").status_code == 403


def test_a_password_session_defaulting_to_an_sso_organization_works_in_another(
    owner: User, owner_org: Organization
) -> None:
    # Given Max, signed in with a password, whose default is Olivia's organization, which
    # requires single sign-on
    max_ = user_create(email="max@example.com", password="correct-horse-9")
    membership_set(organization=owner_org, user=max_, role=Role.MEMBER)
    owner_org.require_sso = True
    owner_org.save()
    max_.default_organization = owner_org
    max_.save()
    model_create(
        organization=owner_org,
        name="sso-bot",
        engine=Engine.MOCK,
        model_id="meta-llama/Llama-3.1-8B-Instruct",
        gpu_count=0,
    )
    browser = Client()
    browser.force_login(max_)

    # the portal works in his own organization: it answers, without Olivia's model codes
    page = browser.get("/")
    assert page.status_code == 200 and "sso-bot" not in page.content.decode()
    assert browser.get("/organization/").status_code == 200
    # and the switch stays usable, never redirecting off the site
    mine = Organization.objects.get(
        memberships__user=max_, memberships__role=Role.OWNER, personal=True
    )
    for target in ["/\\evil.example", "//evil.example", "https://evil.example/"]:
        switched = browser.post(
            "/organization/switch/", {"organization": mine.slug, "next": target}
        )
        assert switched.status_code == 302 and switched["Location"] == "/", target
    assert (
        browser.post("/organization/switch/", {"organization": mine.slug, "next": "/keys/"})[
            "Location"
        ]
        == "/keys/"
    )


def test_with_only_sso_organizations_a_password_session_is_refused_in_words(
    owner: User, owner_org: Organization
) -> None:
    owner_org.require_sso = True
    owner_org.save()
    browser = Client()
    browser.force_login(owner)
    page = browser.get("/")
    assert page.status_code == 403 and "single sign-on" in page.content.decode()

"""Tenant isolation, generated from the URL configuration: every REST endpoint (route × method
under /api/v1/) is called as the organization's owner, admin and member, a member of another
organization and an anonymous caller. Each endpoint states the capability it needs
(apps/accounts/permissions.py) in ``ENDPOINTS``; an endpoint missing from it fails the suite,
so a new endpoint cannot escape the check.

Expected: anonymous → 401/403; the outsider → 404 on anything of the organization (and lists
without its rows); a member whose role lacks the capability → 403 and nothing changed; a role
that has it → neither 401, 403 nor 404.
"""

from __future__ import annotations

import re
from typing import Any

import pytest
from django.urls import URLPattern, URLResolver, get_resolver
from rest_framework.test import APIClient

from apps.accounts.choices import Role
from apps.accounts.models import Invitation, Organization, User
from apps.accounts.permissions import CAPABILITIES, Capability
from apps.accounts.services import (
    access_token_create,
    invitation_create,
    membership_set,
    organization_create,
    user_create,
)
from apps.billing.services.budgets import budget_set
from apps.gateway.services import api_key_create
from apps.instances.choices import InstanceStatus, ProviderKind
from apps.instances.models import Provider
from apps.models.models import LlmModel, ScalingQuota
from apps.models.services import model_create
from tests.instances.factories import make_instance

pytestmark = pytest.mark.django_db

C = Capability
SELF = "self"  # about the caller only (their own tokens, profile): any signed-in user
STAFF = "staff"  # operators only
ANY_USER = "any"  # any signed-in user, scoped to what they belong to (lists, create in own org)

# (route name, method) → what it needs. Lists of the organization's things are READ: the
# outsider gets a page without the organization's rows.
ENDPOINTS: dict[tuple[str, str], str | Capability] = {
    ("me", "get"): SELF,
    ("access-token-list", "get"): SELF,
    ("access-token-list", "post"): SELF,
    ("access-token-revoke", "post"): SELF,
    ("invitation-accept", "post"): SELF,
    ("organization-list", "get"): ANY_USER,
    ("organization-list", "post"): ANY_USER,
    ("organization-detail", "get"): C.READ,
    ("organization-detail", "patch"): C.ORGANIZATION_RENAME,
    ("organization-detail", "delete"): C.ORGANIZATION_DELETE,
    ("organization-transfer", "post"): C.ORGANIZATION_TRANSFER,
    ("organization-default", "post"): C.READ,
    ("organization-leave", "post"): C.READ,
    ("organization-member-list", "get"): C.READ,
    ("organization-member-detail", "patch"): C.ROLES_MANAGE,
    ("organization-member-detail", "delete"): C.MEMBERS_MANAGE,
    ("organization-invitation-list", "get"): C.INVITATIONS_MANAGE,
    ("organization-invitation-list", "post"): C.INVITATIONS_MANAGE,
    ("organization-invitation-revoke", "post"): C.INVITATIONS_MANAGE,
    ("organization-audit", "get"): C.AUDIT_READ,
    ("model-code-list", "get"): C.READ,
    ("model-code-list", "post"): C.MODELS_MANAGE,
    ("model-code-detail", "get"): C.READ,
    ("model-code-detail", "patch"): C.MODELS_MANAGE,
    ("model-code-detail", "delete"): C.MODELS_MANAGE,
    ("model-code-deploy", "post"): C.DEPLOYMENTS_MANAGE,
    ("model-code-replicas", "post"): C.DEPLOYMENTS_MANAGE,
    ("model-code-decommission", "post"): C.DEPLOYMENTS_MANAGE,
    ("model-code-scaling", "patch"): C.DEPLOYMENTS_MANAGE,
    ("model-code-scaling-decisions", "get"): C.READ,
    ("model-offers", "get"): C.READ,
    ("hub-token", "get"): C.MODELS_MANAGE,
    ("hub-token", "put"): C.MODELS_MANAGE,
    ("hub-token", "delete"): C.MODELS_MANAGE,
    ("organization-scaling-quota", "get"): C.READ,
    ("organization-scaling-quota", "put"): STAFF,  # the quota caps the platform's spend
    ("instance-list", "get"): C.READ,
    ("instance-detail", "get"): C.READ,
    ("instance-drain", "post"): C.DEPLOYMENTS_MANAGE,
    ("instance-terminate", "post"): C.DEPLOYMENTS_MANAGE,
    ("api-key-list", "get"): C.READ,
    ("api-key-list", "post"): C.KEYS_MANAGE,
    ("api-key-detail", "get"): C.READ,
    ("api-key-detail", "delete"): C.KEYS_MANAGE,
    ("api-key-revoke", "post"): C.KEYS_MANAGE,
    ("api-key-rotate", "post"): C.KEYS_MANAGE,
    ("usage-list", "get"): C.READ,
    ("usage-summary", "get"): C.READ,
    ("usage-rollups", "get"): C.READ,
    ("price-list", "get"): C.READ,
    ("ops-ping", "post"): STAFF,
    ("price-list", "post"): STAFF,  # prices are set by operators
    ("usage-export", "get"): C.READ,
    ("budget-list", "get"): C.READ,
    ("budget-list", "post"): C.BILLING_MANAGE,
    ("budget-detail", "delete"): C.BILLING_MANAGE,
    ("billing-costs", "get"): STAFF,
    ("cluster-status", "get"): STAFF,
}

PERSONAS = ["owner", "admin", "member", "outsider", "anonymous"]
HTTP_METHODS = {"get", "post", "put", "patch", "delete"}


def _api_routes() -> dict[tuple[str, str], str]:
    """(route name, method) → the route's regex, for every endpoint under /api/v1/."""
    found: dict[tuple[str, str], str] = {}

    def walk(patterns: Any, prefix: str) -> None:
        for p in patterns:
            regex = prefix + p.pattern.regex.pattern.lstrip("^").rstrip("$").replace(r"\Z", "")
            if isinstance(p, URLResolver):
                walk(p.url_patterns, regex)
            elif isinstance(p, URLPattern) and regex.startswith("api/v1/"):
                actions = getattr(p.callback, "actions", None)
                view_class = getattr(p.callback, "view_class", None) or getattr(
                    p.callback, "cls", None
                )
                if actions:
                    methods = set(actions)
                else:
                    methods = {m for m in HTTP_METHODS if hasattr(view_class, m)}
                for method in methods & HTTP_METHODS:
                    found[(p.name or regex, method)] = regex

    walk(get_resolver().url_patterns, "")
    return found


ROUTES = _api_routes()


def test_every_endpoint_is_in_the_table() -> None:
    missing = sorted(set(ROUTES) - set(ENDPOINTS))
    assert not missing, f"endpoints without a stated capability in ENDPOINTS: {missing}"
    assert len(ROUTES) > 40  # the walk found the API


class World:
    def __init__(self) -> None:
        self.owner = user_create(email="o@example.com", password=None)
        self.admin = user_create(email="a@example.com", password=None)
        self.member = user_create(email="m@example.com", password=None)
        self.outsider = user_create(email="x@example.com", password=None)
        self.org = organization_create(name="Team", owner=self.owner)
        membership_set(organization=self.org, user=self.admin, role=Role.ADMIN)
        membership_set(organization=self.org, user=self.member, role=Role.MEMBER)
        self.other_org = Organization.objects.get(personal_user=self.outsider)
        Provider.objects.get_or_create(kind=ProviderKind.LOCAL, defaults={"name": "local"})
        self.model = model_create(
            organization=self.org, name="bot", engine="mock", model_id="o/m", gpu_count=0
        )
        self.key, _ = api_key_create(
            organization=self.org, created_by=self.owner, name="k", model_codes=[self.model]
        )
        self.instance, _ = make_instance(self.model, InstanceStatus.READY)
        self.invitation, _ = invitation_create(
            created_by=self.owner, email="new@example.com", organization=self.org
        )
        self.budget = budget_set(organization=self.org, currency="EUR", monthly_limit="10")
        self.victim = user_create(email="v@example.com", password=None)
        membership_set(organization=self.org, user=self.victim, role=Role.MEMBER)

    def token_of(self, user: User | None) -> int:
        owner = user or self.owner
        token, _ = access_token_create(user=owner, name="t")
        return token.pk

    def url(self, name: str, regex: str, caller: User | None) -> str:
        values = {
            "pk": {
                "model-code": self.model.pk,
                "instance": self.instance.pk,
                "api-key": self.key.pk,
                "access-token": self.token_of(caller),
                "organization-member": self.victim.pk,
                "organization-invitation": self.invitation.pk,
                "budget": self.budget.pk,
            },
            "slug": self.org.slug,
            "organization_slug": self.org.slug,
            "model_code_id": self.model.pk,
            "budget_id": self.budget.pk,
        }

        def fill(match: re.Match[str]) -> str:
            key = match.group(1)
            value = values[key]
            if isinstance(value, dict):
                value = next(v for k, v in value.items() if name.startswith(k))
            return str(value)

        path = re.sub(r"\(\?P<(\w+)>[^)]*\)", fill, regex)
        path = re.sub(r"<(?:\w+:)?(\w+)>", fill, path)
        return "/" + path.replace("\\", "")

    def body(self, name: str) -> dict[str, Any]:
        return {
            "organization-list": {"name": "New org"},
            "organization-detail": {"name": "Renamed"},
            "organization-transfer": {"to_user": self.admin.pk},
            "organization-member-detail": {"role": "admin"},
            "organization-invitation-list": {"email": "z@example.com", "role": "member"},
            "model-code-list": {
                "name": "new",
                "engine": "mock",
                "model_id": "o/m",
                "gpu_count": 0,
                "organization": self.org.slug,
            },
            "model-code-detail": {"display_name": "x"},
            "model-code-replicas": {"replicas": 1},
            "api-key-list": {"name": "k2", "organization": self.org.slug},
            "access-token-list": {"name": "t2"},
            "invitation-accept": {"token": "ivi_nothing_here"},
            "hub-token": {"token": "hf_x"},
            "organization-scaling-quota": {"max_gpus": 4, "max_instances": 2},
            "budget-list": {"organization": self.org.slug, "currency": "EUR", "monthly_limit": "5"},
        }.get(name, {})


def _allowed(need: str | Capability, persona: str) -> bool:
    if persona == "anonymous":
        return False
    if need in (SELF, ANY_USER):
        return True
    if need == STAFF:
        return False
    if persona == "outsider":
        return False
    return Role(persona) in CAPABILITIES[Capability(need)]


@pytest.mark.parametrize("persona", PERSONAS)
@pytest.mark.parametrize("endpoint", sorted(ROUTES), ids=lambda e: f"{e[1]}:{e[0]}")
def test_endpoint_as_persona(endpoint: tuple[str, str], persona: str) -> None:
    name, method = endpoint
    need = ENDPOINTS.get(endpoint)
    if need is None:
        pytest.fail(f"{endpoint} is not in ENDPOINTS")
    world = World()
    caller: User | None = None if persona == "anonymous" else getattr(world, persona)
    client = APIClient()
    if caller is not None:
        client.force_authenticate(caller)
    url = world.url(name, ROUTES[endpoint], caller)
    before = _snapshot(world)
    kwargs: dict[str, Any] = {"format": "json"} if method != "get" else {}
    data = world.body(name) if method != "get" else None
    answer = getattr(client, method)(url, data, **kwargs)
    status = answer.status_code
    label = f"{method.upper()} {url} as {persona}: {status} {answer.content[:300]!r}"

    if persona == "anonymous":
        assert status in (401, 403), label
    elif _allowed(need, persona):
        assert status not in (401, 403, 404), label
        assert status < 500, label
    elif persona == "outsider" and need == C.READ and method == "get" and "{" not in url:
        # a list: answered, without the organization's rows
        assert status in (200, 404), label
        if status == 200:
            assert world.org.slug not in answer.content.decode(), label
            assert str(world.key.lookup_id) not in answer.content.decode(), label
    elif persona == "outsider" or need == STAFF:
        assert status in (403, 404), label
        if need != STAFF and _is_detail(url, world):
            assert status == 404, label  # another organization's things are not found
    else:
        assert status == 403, label
        assert answer.json()["error"]["code"] == "permission_denied", label
    if not _allowed(need, persona) and method != "get":
        assert _snapshot(world) == before, f"refused but changed: {label}"


def _is_detail(url: str, world: World) -> bool:
    return world.org.slug in url or any(
        f"/{v}/" in url for v in (world.model.pk, world.key.pk, world.instance.pk, world.budget.pk)
    )


def _snapshot(world: World) -> tuple[Any, ...]:
    from apps.accounts.models import Membership
    from apps.billing.models import Budget
    from apps.gateway.models import ApiKey
    from apps.instances.models import Instance

    return (
        tuple(Organization.objects.order_by("id").values_list("id", "name")),
        tuple(Membership.objects.order_by("id").values_list("id", "role")),
        tuple(Invitation.objects.order_by("id").values_list("id", "revoked_at")),
        tuple(LlmModel.objects.order_by("id").values_list("id", "status", "desired_replicas")),
        tuple(ApiKey.objects.order_by("id").values_list("id", "revoked_at")),
        tuple(Instance.objects.order_by("id").values_list("id", "status")),
        tuple(Budget.objects.order_by("id").values_list("id", "monthly_limit")),
        tuple(ScalingQuota.objects.order_by("id").values_list("id", "max_gpus", "max_instances")),
    )

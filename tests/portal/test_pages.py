"""The portal's pages with Django's test client on the real database: what each page shows,
its empty states, forms that refuse bad input in words, and that every page reads through the
same access-checked selectors as REST (someone else's object is "not found")."""

from __future__ import annotations

import re
from datetime import timedelta
from decimal import Decimal
from typing import Any

import pytest
from django.test import Client
from django.utils import timezone

from apps.accounts.choices import Role
from apps.accounts.models import Invitation, Membership, Organization, User
from apps.accounts.services import invitation_create, membership_set, user_create
from apps.billing.models import Budget, UsageRecord
from apps.billing.services.rollups import usage_rollup
from apps.gateway.models import ApiKey
from apps.gateway.services import api_key_create
from apps.instances.choices import InstanceStatus, ProviderKind
from apps.instances.models import Instance, InstanceEvent, InstanceType, Provider, ProvisionAttempt
from apps.models.choices import Engine, ModelStatus
from apps.models.models import LlmModel
from apps.models.services import model_create

pytestmark = pytest.mark.django_db


@pytest.fixture
def client_of() -> Any:
    def make(user: User) -> Client:
        client = Client()
        client.force_login(user)
        return client

    return make


@pytest.fixture
def olivia(owner: User, client_of: Any) -> Client:
    return client_of(owner)


@pytest.fixture
def local(settings: Any) -> Provider:
    settings.LOCAL_PROVIDER_ENABLED = True
    return Provider.objects.create(name="local", kind=ProviderKind.LOCAL)


@pytest.fixture
def bot(owner_org: Organization) -> LlmModel:
    return model_create(
        organization=owner_org,
        name="sales-bot",
        engine=Engine.MOCK,
        model_id="meta-llama/Llama-3.1-8B-Instruct",
        gpu_count=0,
    )


def _text(response: Any) -> str:
    return re.sub(r"\s+", " ", response.content.decode())


def test_it_sends_anonymous_visitors_to_the_login(client: Client) -> None:
    response = client.get("/")
    assert response.status_code == 302
    assert response["Location"].startswith("/accounts/login/")


def test_it_shows_empty_states_to_a_new_user(olivia: Client) -> None:
    page = _text(olivia.get("/"))
    assert "No model code yet" in page and "Create your first model code" in page
    assert "No instance running" in page
    for path, words in [
        ("/keys/", "No API key yet"),
        ("/usage/", "No budget"),
        ("/playground/", "No deployed model code"),
        ("/organization/", "No invitation sent yet"),
    ]:
        response = olivia.get(path)
        assert response.status_code == 200, path
        assert words in _text(response), path


def test_the_dashboard_shows_model_codes_instances_usage_and_budget(
    olivia: Client, owner_org: Organization, bot: LlmModel, local: Provider
) -> None:
    # Given a ready instance, two requests today and a budget
    now = timezone.now()
    Instance.objects.create(
        organization=owner_org,
        llm_model=bot,
        provider=local,
        status=InstanceStatus.READY,
        status_changed_at=now,
        engine_secret_encrypted="x",
    )
    for n in range(2):
        UsageRecord.objects.create(
            request_id=f"r{n}",
            organization=owner_org,
            model_code="sales-bot",
            model_code_id=bot.id,
            endpoint="chat",
            prompt_tokens=10,
            completion_tokens=5,
            total_tokens=15,
            status_code=200,
            started_at=now,
        )
    Budget.objects.create(organization=owner_org, currency="EUR", monthly_limit=Decimal(50))

    page = _text(olivia.get("/"))

    assert '<p class="figure" id="requests-today">2</p>' in page
    assert '<p class="figure" id="tokens-today">30</p>' in page
    assert "sales-bot" in page and "1 / 1" in page
    assert "50.00 EUR" in page


def test_the_wizard_lists_offers_with_price_and_estimated_cost(
    olivia: Client, local: Provider
) -> None:
    cloud = Provider.objects.create(name="scw", kind=ProviderKind.SCALEWAY)
    InstanceType.objects.create(
        provider=cloud,
        code="H100-1-80G",
        gpu_model="NVIDIA H100",
        gpu_count=1,
        vram_per_gpu_gb=80,
        hourly_price=Decimal("2.73"),
        currency="EUR",
        availability={"fr-par-2": "available"},
    )

    response = olivia.post(
        "/models/new/offers/",
        {"catalog": "llama-3.1-8b", "engine": "vllm", "gpu_count": 1, "dtype": "auto"},
    )

    page = _text(response)
    assert response.status_code == 200
    assert "H100-1-80G" in page and "2.73 EUR" in page and "fr-par-2" in page
    assert "estimated: 8.0B parameters" in page
    # 2.73 EUR/h over ~3350 GB/s × 0.5 / 16 GB × 32 sequences ≈ 3350 tok/s: ~0.23 EUR per 1M
    assert "0.23 EUR" in page
    assert "local" in page


def test_the_wizard_refuses_bad_input_in_words(olivia: Client, local: Provider) -> None:
    response = olivia.post(
        "/models/new/",
        {
            "name": "Bad Name!",
            "engine": "vllm",
            "gpu_count": 0,
            "dtype": "auto",
            "min_replicas": 3,
            "max_replicas": 1,
            "target_load_per_replica": 8,
            "idle_to_zero_s": 900,
        },
    )
    page = _text(response)
    assert response.status_code == 200
    assert "Use lower-case letters" in page
    assert "Pick a model from the list or type its id." in page
    assert "The maximum must be at least the minimum." in page
    assert not LlmModel.objects.exists()


def test_the_wizard_shows_the_services_refusal_on_its_field(
    olivia: Client, local: Provider
) -> None:
    response = olivia.post(
        "/models/new/",
        {
            "name": "big",
            "model_id": "org/model",
            "engine": "vllm",
            "gpu_count": 0,
            "dtype": "auto",
            "min_replicas": 1,
            "max_replicas": 1,
            "target_load_per_replica": 8,
            "idle_to_zero_s": 900,
        },
    )
    assert "the vllm engine needs at least one GPU" in _text(response)
    assert not LlmModel.objects.exists()


def test_the_wizard_creates_sets_the_policy_and_deploys(
    olivia: Client, owner_org: Organization, local: Provider
) -> None:
    response = olivia.post(
        "/models/new/",
        {
            "name": "support-bot",
            "model_id": "org/tiny",
            "engine": "mock",
            "gpu_count": 0,
            "dtype": "auto",
            "offer": f"{local.id}:-:local",
            "min_replicas": 0,
            "max_replicas": 3,
            "target_load_per_replica": 4,
            "idle_to_zero_s": 120,
            "deploy": "1",
        },
    )
    model = LlmModel.objects.get(name="support-bot")
    assert response.status_code == 302 and response["Location"] == f"/models/{model.id}/"
    assert model.organization == owner_org and model.provider == local
    assert (model.min_replicas, model.max_replicas, model.idle_to_zero_s) == (0, 3, 120)
    assert model.status == ModelStatus.DEPLOYING and model.desired_replicas == 1
    assert "its first replica is starting" in _text(olivia.get(response["Location"]))


def test_the_wizard_offers_tgi_the_power_off_mode_and_the_latency_bound(
    olivia: Client, local: Provider
) -> None:
    wizard = _text(olivia.get("/models/new/"))
    assert "TGI, text-generation-inference" in wizard and "Power them off" in wizard
    fields = {
        "model_id": "org/chat",
        "engine": "tgi",
        "gpu_count": 1,
        "vram_per_gpu_gb": 24,
        "dtype": "auto",
        "min_replicas": 0,
        "max_replicas": 2,
        "target_load_per_replica": 8,
        "idle_to_zero_s": 600,
        "scale_to_zero_mode": "power_off",
        "ttft_p95_bound_ms": 800,
        "deploy": "0",
    }
    # TGI needs a GPU, as vLLM: refused in words on the field
    refused = olivia.post("/models/new/", {**fields, "name": "tgi-cpu", "gpu_count": 0})
    assert refused.status_code == 200 and "the tgi engine needs at least one GPU" in _text(refused)
    assert not LlmModel.objects.exists()
    response = olivia.post("/models/new/", {**fields, "name": "tgi-bot"})
    model = LlmModel.objects.get(name="tgi-bot")
    assert response.status_code == 302
    assert (model.engine, model.scale_to_zero_mode, model.ttft_p95_bound_ms) == (
        "tgi",
        "power_off",
        800,
    )


def test_the_model_page_shows_replicas_decisions_and_the_example_call(
    olivia: Client, owner_org: Organization, bot: LlmModel
) -> None:
    key, _ = api_key_create(organization=owner_org, name="ci")
    bot.scaling_decisions.create(
        trigger="periodic", replicas_before=1, replicas_after=2, reason="load 9 > 8 per replica"
    )
    page = _text(olivia.get(f"/models/{bot.id}/"))
    assert "1 → 2" in page and "load 9 &gt; 8 per replica" in page
    assert f"sk-inv_{key.lookup_id}_…" in page
    assert "http://testserver/v1/chat/completions" in page
    assert '"model": "sales-bot"' in page


def test_scale_pause_and_decommission_go_through_the_services(
    olivia: Client, bot: LlmModel, local: Provider
) -> None:
    olivia.post(f"/models/{bot.id}/replicas/", {"replicas": 2})
    bot.refresh_from_db()
    assert (bot.status, bot.desired_replicas) == (ModelStatus.DEPLOYING, 2)

    olivia.post(f"/models/{bot.id}/pause/")
    bot.refresh_from_db()
    assert (bot.desired_replicas, bot.min_replicas, bot.max_replicas) == (0, 0, 0)

    bad = olivia.post(f"/models/{bot.id}/replicas/", {"replicas": 999}, follow=True)
    assert "Replicas: Ensure this value is less than or equal to 64." in _text(bad)

    olivia.post(f"/models/{bot.id}/decommission/")
    bot.refresh_from_db()
    assert bot.status == ModelStatus.DECOMMISSIONING
    again = olivia.post(f"/models/{bot.id}/replicas/", {"replicas": 1}, follow=True)
    assert "this command no longer applies" in _text(again) or "Deploy the model code" in _text(
        again
    )


def test_the_instance_page_shows_its_timeline_heartbeat_and_metrics(
    olivia: Client, owner_org: Organization, bot: LlmModel, local: Provider
) -> None:
    now = timezone.now()
    instance = Instance.objects.create(
        organization=owner_org,
        llm_model=bot,
        provider=local,
        status=InstanceStatus.READY,
        status_changed_at=now,
        last_heartbeat_at=now,
        engine_secret_encrypted="x",
        engine_metrics={"requests_running": 3.0, "kv_cache_usage": 0.25},
    )
    InstanceEvent.objects.create(
        instance=instance, from_status="starting", to_status="ready", reason="engine healthy"
    )
    ProvisionAttempt.objects.create(
        instance=instance,
        provider=local,
        instance_type_code="GPU-X",
        zone="z1",
        outcome="failed",
        error_code="out_of_stock",
        message="no capacity in z1",
    )

    page = _text(olivia.get(f"/instances/{instance.id}/"))

    assert "starting → ready" in page and "engine healthy" in page
    assert "attempt on local GPU-X z1: failed" in page and "out_of_stock: no capacity in z1" in page
    assert re.search(r'id="heartbeat-age">\d s ago', page)
    assert "Requests running" in page and "KV cache in use" in page


def test_someone_elses_objects_are_not_found(
    client_of: Any, stranger: User, owner_org: Organization, bot: LlmModel, local: Provider
) -> None:
    key, _ = api_key_create(organization=owner_org, name="ci")
    instance = Instance.objects.create(
        organization=owner_org,
        llm_model=bot,
        provider=local,
        status=InstanceStatus.READY,
        status_changed_at=timezone.now(),
        engine_secret_encrypted="x",
    )
    sam = client_of(stranger)

    for method, path in [
        ("get", f"/models/{bot.id}/"),
        ("post", f"/models/{bot.id}/decommission/"),
        ("get", f"/instances/{instance.id}/"),
        ("post", f"/keys/{key.id}/revoke/"),
        ("post", f"/keys/{key.id}/rotate/"),
    ]:
        response = getattr(sam, method)(path)
        assert response.status_code == 404, path
        assert "No such" in _text(response)
    assert "sales-bot" not in _text(sam.get("/"))
    bot.refresh_from_db()
    key.refresh_from_db()
    assert bot.status == ModelStatus.DRAFT and key.revoked_at is None


def test_a_member_sees_but_cannot_manage(
    client_of: Any, owner_org: Organization, bot: LlmModel
) -> None:
    # Given Max, a member of Olivia's organization working in it
    max_ = user_create(email="max@example.com", password="correct-horse-9")
    membership_set(organization=owner_org, user=max_, role=Role.MEMBER)
    max_.default_organization = owner_org
    max_.save()
    key, _ = api_key_create(organization=owner_org, name="ci")
    browser = client_of(max_)

    assert "sales-bot" in _text(browser.get("/"))
    refused = browser.post("/keys/", {"name": "mine"})
    assert refused.status_code == 403 and "owner or admin" in _text(refused)
    assert browser.post(f"/keys/{key.id}/revoke/").status_code == 403
    decommission = browser.post(f"/models/{bot.id}/decommission/", follow=True)
    assert "owner or admin" in _text(decommission)
    assert browser.post("/models/new/", {"name": "x"}).status_code == 403
    assert "Create key" not in _text(browser.get("/keys/"))
    bot.refresh_from_db()
    assert bot.status == ModelStatus.DRAFT and not ApiKey.objects.filter(name="mine").exists()


def test_a_key_is_created_with_its_secret_shown_once(
    olivia: Client, owner_org: Organization, bot: LlmModel
) -> None:
    response = olivia.post(
        "/keys/",
        {"name": "staging", "model_codes": [str(bot.id)], "rpm_limit": "60", "expires_on": ""},
    )
    page = _text(response)
    key = ApiKey.objects.get(name="staging")
    secret = re.search(r'id="secret" type="text" readonly value="(sk-inv_[^"]+)"', page)
    assert response.status_code == 201 and secret
    assert secret.group(1).startswith(f"sk-inv_{key.lookup_id}_")
    assert key.rpm_limit == 60 and list(key.model_codes.all()) == [bot]
    # Never again: the list shows the prefix only
    assert secret.group(1) not in _text(olivia.get("/keys/"))


def test_key_forms_refuse_bad_input_in_words(olivia: Client, owner_org: Organization) -> None:
    past = olivia.post("/keys/", {"name": "old", "expires_on": "2001-01-01"})
    assert past.status_code == 400 and "The expiry must be a day in the future." in _text(past)
    zero = olivia.post("/keys/", {"name": "z", "rpm_limit": "0"})
    assert "Ensure this value is greater than or equal to 1." in _text(zero)
    key, _ = api_key_create(organization=owner_org, name="ci")
    bad = olivia.post(f"/keys/{key.id}/limits/", {"tpm_limit": "-3"}, follow=True)
    assert "Tokens per minute: Ensure this value is greater than or equal to 1." in _text(bad)
    assert not ApiKey.objects.filter(name__in=["old", "z"]).exists()


def test_keys_are_rotated_limited_and_revoked(olivia: Client, owner_org: Organization) -> None:
    key, _ = api_key_create(organization=owner_org, name="ci")

    olivia.post(f"/keys/{key.id}/limits/", {"rpm_limit": "10", "concurrency_limit": "2"})
    key.refresh_from_db()
    assert (key.rpm_limit, key.tpm_limit, key.concurrency_limit) == (10, None, 2)

    rotated = olivia.post(f"/keys/{key.id}/rotate/")
    new = ApiKey.objects.get(rotated_from=key)
    assert rotated.status_code == 201 and f"sk-inv_{new.lookup_id}_" in _text(rotated)
    key.refresh_from_db()
    assert key.revoked_at is not None and new.rpm_limit == 10

    olivia.post(f"/keys/{new.id}/revoke/")
    new.refresh_from_db()
    assert new.revoked_at is not None
    again = olivia.post(f"/keys/{new.id}/rotate/", follow=True)
    assert "This key is revoked." in _text(again)


def test_usage_shows_totals_by_model_and_key_and_budget_warnings(
    olivia: Client, owner_org: Organization, bot: LlmModel
) -> None:
    key, _ = api_key_create(organization=owner_org, name="ci")
    now = timezone.now()
    for n, tokens in enumerate([100, 300]):
        UsageRecord.objects.create(
            request_id=f"u{n}",
            organization=owner_org,
            api_key_id=key.id,
            model_code="sales-bot",
            model_code_id=bot.id,
            endpoint="chat",
            prompt_tokens=tokens,
            completion_tokens=0,
            total_tokens=tokens,
            status_code=200,
            started_at=now,
        )
    Budget.objects.create(
        organization=owner_org, currency="EUR", monthly_limit=Decimal(0), warn_at_percent=50
    )

    page = _text(olivia.get("/usage/"))

    assert 'id="usage-tokens">400<' in page and 'id="usage-requests">2<' in page
    assert re.search(r"<code>sales-bot</code></td><td><meter [^>]*></meter> 400", page)
    assert re.search(r"<td>ci</td><td><meter [^>]*></meter> 400", page)
    assert "Budget reached" in page
    assert 'id="usage-series"' in page
    # The export link works with the session: the day's rollup (the billing pass's) of both
    usage_rollup(since=now - timedelta(hours=1))
    link = re.search(r'id="csv-export" href="([^"]+)"', page)
    assert link and link.group(1).startswith("/api/v1/usage/export.csv?since=")
    export = olivia.get(link.group(1).replace("&amp;", "&"))
    assert export.status_code == 200, export.content[:300]
    assert export["Content-Type"].startswith("text/csv")
    rows = export.content.decode().splitlines()
    assert len(rows) == 2 and ",sales-bot," in rows[1] and ",2,400,0," in rows[1], rows


def test_budgets_are_set_with_clear_errors(olivia: Client, owner_org: Organization) -> None:
    bad = olivia.post(
        "/usage/budgets/", {"currency": "eur", "monthly_limit": "10", "warn_at_percent": "80"}
    )
    assert bad.status_code == 400 and "Three capital letters, e.g. EUR." in _text(bad)
    olivia.post(
        "/usage/budgets/", {"currency": "EUR", "monthly_limit": "10", "warn_at_percent": "80"}
    )
    budget = Budget.objects.get(organization=owner_org)
    assert budget.monthly_limit == 10 and budget.api_key is None


def test_an_invitation_is_created_and_accepted_by_a_signed_in_user(
    olivia: Client,
    client_of: Any,
    owner: User,
    owner_org: Organization,
    mailoutbox: list[Any],
    django_capture_on_commit_callbacks: Any,
) -> None:
    with django_capture_on_commit_callbacks(execute=True):
        response = olivia.post(
            "/organization/invite/", {"email": "max@example.com", "role": "admin"}
        )
    link = re.search(r'id="invite-link" type="text" readonly value="([^"]+)"', _text(response))
    assert response.status_code == 201 and link
    assert link.group(1) in mailoutbox[0].body
    token = link.group(1).split("invitation=")[1]

    max_ = user_create(email="max@example.com", password="correct-horse-9")
    browser = client_of(max_)
    assert "as <strong>admin</strong>" in _text(
        browser.get(f"/invitations/accept/?invitation={token}")
    )
    accepted = browser.post("/invitations/accept/", {"token": token}, follow=True)

    assert "you joined as admin" in _text(accepted)
    assert Membership.objects.get(user=max_, organization=owner_org).role == Role.ADMIN
    assert Invitation.objects.get().used_by == max_
    # Now working in it; the audit log shows the acceptance to the owner
    assert owner_org.name in _text(browser.get("/"))
    assert "invitation.accept" in _text(olivia.get("/organization/"))


def test_invitations_roles_and_switching_refuse_in_words(
    olivia: Client, owner: User, owner_org: Organization
) -> None:
    bad = olivia.post("/organization/invite/", {"email": "not-an-address", "role": "member"})
    assert bad.status_code == 400 and "Enter a valid email address." in _text(bad)
    self_invite = olivia.post("/organization/invite/", {"email": owner.email, "role": "member"})
    assert "already a member" in _text(self_invite)
    demote = olivia.post(f"/organization/members/{owner.id}/role/", {"role": "member"}, follow=True)
    assert "The last owner cannot be demoted" in _text(demote)
    other = olivia.post("/organization/switch/", {"organization": "nope"}, follow=True)
    assert "No such organization." in _text(other)
    used = olivia.post("/invitations/accept/", {"token": "ivi_bogus"}, follow=True)
    assert "unknown, expired, revoked or already used" in _text(used)


def test_creating_and_switching_organizations(olivia: Client, owner: User) -> None:
    olivia.post("/organization/new/", {"name": "Acme Labs"})
    acme = Organization.objects.get(name="Acme Labs")
    assert "Acme Labs" in _text(olivia.get("/"))  # created organizations become the working one
    personal = Organization.objects.get(personal_user=owner)
    olivia.post("/organization/switch/", {"organization": personal.slug, "next": "/keys/"})
    owner.refresh_from_db()
    assert owner.default_organization == personal and acme.memberships.filter(user=owner).exists()


def test_an_expired_invitation_shows_as_such(
    olivia: Client, owner: User, owner_org: Organization
) -> None:
    invitation, _ = invitation_create(
        created_by=owner, email="late@example.com", organization=owner_org
    )
    Invitation.objects.filter(id=invitation.id).update(expires_at=timezone.now())
    assert "expired" in _text(olivia.get("/organization/"))


def test_the_dashboard_and_model_page_read_in_a_constant_number_of_queries(
    olivia: Client, owner_org: Organization, local: Provider, bot: LlmModel
) -> None:
    from django.db import connection
    from django.test.utils import CaptureQueriesContext

    def counted(path: str) -> int:
        with CaptureQueriesContext(connection) as queries:
            assert olivia.get(path).status_code == 200
        return len(queries)

    def add(n: int) -> None:
        for i in range(n):
            model = model_create(
                organization=owner_org,
                name=f"bot-{Instance.objects.count()}-{i}",
                engine=Engine.MOCK,
                model_id="org/m",
                gpu_count=0,
            )
            for target in (model, bot):
                Instance.objects.create(
                    organization=owner_org,
                    llm_model=target,
                    provider=local,
                    status=InstanceStatus.READY,
                    status_changed_at=timezone.now(),
                    engine_secret_encrypted="x",
                )
            api_key_create(organization=owner_org, name=f"k{i}", model_codes=[model, bot])

    add(1)
    dashboard, model_page, keys = counted("/"), counted(f"/models/{bot.id}/"), counted("/keys/")
    add(5)
    assert counted("/") == dashboard
    assert counted(f"/models/{bot.id}/") == model_page
    assert counted("/keys/") == keys

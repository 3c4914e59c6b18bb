"""Prepare the demo: an admin (credentials generated once and reused), the local provider, a
deployed demo model code on the mock engine, and an API key. Prints what a newcomer needs.
Idempotent. ``make demo`` runs the same steps inside ``run_embedded --demo`` (one Python start)."""

from __future__ import annotations

import json
import secrets
from pathlib import Path
from typing import Any

from django.conf import settings
from django.core.management.base import BaseCommand

from apps.accounts.models import Organization, User
from apps.accounts.services import organization_ensure_personal, user_create
from apps.gateway.services import api_key_ensure_demo
from apps.instances.choices import ProviderKind
from apps.instances.models import Provider
from apps.models.choices import Engine, ModelStatus
from apps.models.models import LlmModel
from apps.models.services import model_create, model_deploy

DEMO_EMAIL = "admin@inventiv.local"
DEMO_MODEL = "demo-chat"


def _state() -> Path:
    return Path(settings.STATE_DIR) / "demo.json"


def demo_ensure() -> tuple[str, str]:
    """The demo's admin, local provider, deployed model code and API key, created once and
    reused (idempotent). Returns (admin password, API key)."""
    state: dict[str, str] = json.loads(_state().read_text()) if _state().exists() else {}
    user = User.objects.filter(email=DEMO_EMAIL).first()
    if user is None or "password" not in state:
        state["password"] = secrets.token_urlsafe(12)
        if user is None:
            user = user_create(email=DEMO_EMAIL, password=state["password"], is_staff=True)
        else:
            user.set_password(state["password"])
            user.save(update_fields=["password"])
    org: Organization = organization_ensure_personal(user=user)
    Provider.objects.get_or_create(name="local", defaults={"kind": ProviderKind.LOCAL})
    model = (
        LlmModel.objects.filter(organization=org, name=DEMO_MODEL)
        .exclude(status=ModelStatus.DECOMMISSIONED)
        .first()
    )
    if model is None:
        model = model_create(
            organization=org,
            name=DEMO_MODEL,
            engine=Engine.MOCK,
            model_id="inventiv/mock-chat-1b",
            gpu_count=0,
            engine_args={"token_rate": 200, "default_max_tokens": 32},
        )
    if model.status == ModelStatus.DRAFT:
        model_deploy(model=model, replicas=1)
    state["api_key"] = api_key_ensure_demo(organization=org, existing=state.get("api_key"))
    _state().write_text(json.dumps(state))
    _state().chmod(0o600)
    return state["password"], state["api_key"]


def demo_remember_agent_api_url(url: str) -> str | None:
    """Record the address the demo's agents are given; returns the previous one (None on the
    first start). Agents left running keep the address they were started with."""
    state: dict[str, str] = json.loads(_state().read_text()) if _state().exists() else {}
    previous = state.get("agent_api_url")
    if previous != url:
        state["agent_api_url"] = url
        _state().write_text(json.dumps(state))
        _state().chmod(0o600)
    return previous


def demo_banner(base: str, password: str, api_key: str) -> list[str]:
    """What a newcomer needs: the portal login, the admin, the key and two ways to call."""
    return [
        "",
        "Inventiv Agents is starting (embedded mode: SQLite, in-process broker, local provider)",
        f"  Portal login   : {base}/accounts/login/   {DEMO_EMAIL} / {password}",
        f"  Admin          : {base}/admin/            (same login; OpenAPI UI: {base}/api/docs/)",
        f"  Demo model code: {DEMO_MODEL} (mock engine, 1 local replica)",
        f"  API key        : {api_key}",
        "",
        "  curl (streamed):",
        f"    curl -N {base}/v1/chat/completions -H 'Authorization: Bearer {api_key}' \\",
        "      -H 'Content-Type: application/json' \\",
        f'      -d \'{{"model": "{DEMO_MODEL}", "stream": true, "messages": '
        '[{"role": "user", "content": "Hello!"}]}\'',
        "",
        "  openai (Python):",
        "    from openai import OpenAI",
        f"    client = OpenAI(base_url='{base}/v1', api_key='{api_key}')",
        f"    for chunk in client.chat.completions.create(model='{DEMO_MODEL}',",
        "            stream=True,",
        "            messages=[{'role': 'user', 'content': 'Hello!'}]):",
        "        print(chunk.choices[0].delta.content or '', end='')",
        "",
    ]


class Command(BaseCommand):
    help = "Create the demo admin, provider, model code and API key (idempotent)."

    def add_arguments(self, parser: Any) -> None:
        parser.add_argument("--base-url", default=settings.PUBLIC_URL)

    def handle(self, *args: Any, **options: Any) -> None:
        password, api_key = demo_ensure()
        for line in demo_banner(options["base_url"], password, api_key):
            self.stdout.write(line)

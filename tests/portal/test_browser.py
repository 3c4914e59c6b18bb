"""The portal in headless Chromium (Debian's, driven by Playwright from PyPI; no downloaded
browser), on the real platform: web with the gateway mounted, Celery worker and beat on
PostgreSQL and Redis, real agents with the mock engine on the local provider.

One walk, as a newcomer would take it: sign up (the confirmation e-mail read from the web
role's console backend), create a model code with the wizard and deploy it on the local
provider, watch its instance reach ready on a page that is never reloaded (the WebSocket's
events refresh it), create a key, chat in the playground (streamed, time to first token and
tokens shown), see the usage chart change without a reload, invite a teammate who signs up
with the link and lands in the organization. Screenshots of every page at desktop (1280) and
phone (390) widths go to test-artifacts/portal/ (gitignored).
"""

from __future__ import annotations

import os
import re
import signal
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from django.core.management import call_command

from apps.accounts.models import Membership, Organization, User
from apps.instances.choices import ProviderKind
from apps.instances.models import Instance, Provider
from apps.instances.providers.local import _tagged_pids
from tests.instances.conftest import FAST
from tests.processes import PYTHON, ROOT, ManagedProcess, ProcessGroup, free_port, wait_for

pytestmark = [pytest.mark.browser, pytest.mark.slow]

CHROMIUM = Path("/usr/bin/chromium")
ARTIFACTS = ROOT / "test-artifacts" / "portal"
PASSWORD = "violet-kangaroo-42"
DESKTOP = {"width": 1280, "height": 900}
PHONE = {"width": 390, "height": 844}


@pytest.fixture
def chromium_path() -> Path:
    if not CHROMIUM.exists():
        if os.environ.get("CI"):
            pytest.fail("Debian's chromium is missing: .ci/run installs it (apt-get install)")
        pytest.skip("no /usr/bin/chromium (apt-get install chromium)")
    return CHROMIUM


UVICORN = ["--host", "127.0.0.1", "--lifespan", "off", "--log-level", "warning"]
WORKER = ["-P", "threads", "-c", "4", "--without-heartbeat", "--without-mingle"]
WORKER += ["--without-gossip", "-l", "INFO", "-n"]


class Platform:
    """The control plane as real processes (web with the gateway mounted, Celery worker and
    beat, as tests.instances.conftest.Platform) started side by side: each waits on its own
    start-up, not on the one before (the worker knows the web's address in advance)."""

    def __init__(self, group: ProcessGroup) -> None:
        for key, value in FAST.items():
            group.env.setdefault(key, value)
        port = free_port()
        self.url = f"http://127.0.0.1:{port}"
        group.env["INVENTIV_AGENT_API_URL"] = self.url
        self.web: ManagedProcess = group.start(
            "web",
            [PYTHON, "-m", "uvicorn", "inventiv.asgi:application", *UVICORN, "--port", str(port)],
            INVENTIV_PUBLIC_URL=self.url,
        )
        name = f"portal{os.getpid()}@%h"
        worker = group.start(
            "worker", [PYTHON, "-m", "celery", "-A", "inventiv", "worker", *WORKER, name]
        )
        group.start(
            "beat",
            [PYTHON, "-m", "celery", "-A", "inventiv", "beat", "-s", str(group.log_dir / "beat")],
        )
        group.wait_http(self.web, self.url + "/healthz")
        wait_for(
            lambda: "ready." in worker.log() or not worker.alive(), timeout=30, message="worker"
        )
        assert worker.alive(), worker.log()


@pytest.fixture
def portal_platform(processes: ProcessGroup, settings: Any, tmp_path: Path) -> Iterator[Platform]:
    """The platform with open sign-up and the static files collected (as production serves
    them: hashed, by WhiteNoise), collected in-process for speed."""
    static_root = tmp_path / "static"
    settings.STATIC_ROOT = static_root
    call_command(
        "collectstatic",
        interactive=False,
        verbosity=0,
        ignore_patterns=["admin", "drf_spectacular_sidecar", "rest_framework"],
    )
    Provider.objects.create(name="local", kind=ProviderKind.LOCAL)
    processes.env.update(
        {
            "INVENTIV_SIGNUP": "open",
            "STATIC_ROOT": str(static_root),
            "EMAIL_BACKEND": "django.core.mail.backends.console.EmailBackend",
        }
    )
    # The test process sends commands too (on commit): the platform's timings.
    settings.HEARTBEAT_INTERVAL_S = float(FAST["INVENTIV_HEARTBEAT_INTERVAL_S"])
    yield Platform(processes)
    ids = {str(i) for i in Instance.objects.values_list("id", flat=True)}
    for instance_id, pids in _tagged_pids().items():
        if instance_id in ids:
            for pid in pids:
                os.kill(pid, signal.SIGKILL)


def _confirmation_link(platform: Platform, email: str, timeout: float = 10) -> str:
    """The e-mail confirmation link the web role printed for ``email`` (console backend)."""

    def found() -> str | None:
        log = platform.web.log()
        start = log.rfind(f"To: {email}")
        if start < 0:
            return None
        match = re.search(r"(http://\S+/accounts/confirm-email/\S+/)", log[start:])
        return match.group(1) if match else None

    link: str = wait_for(found, timeout=timeout, message=f"the confirmation e-mail of {email}")
    return link


# The elements that stick out of the viewport's width (for the failure message).
WIDEST = """(limit) => [...document.querySelectorAll("body *")]
  .filter((e) => e.getBoundingClientRect().right > limit)
  .slice(0, 5).map((e) => e.tagName + "." + e.className + "#" + e.id
    + " " + Math.round(e.getBoundingClientRect().right))"""


class Shots:
    """Screenshots at both widths, named in order."""

    def __init__(self, page: Any) -> None:
        ARTIFACTS.mkdir(parents=True, exist_ok=True)
        for old in ARTIFACTS.glob("*.png"):
            old.unlink()
        self.page = page
        self.count = 0

    def take(self, name: str) -> None:
        self.count += 1
        for label, size in (("desktop", DESKTOP), ("phone", PHONE)):
            self.page.set_viewport_size(size)
            if self.page.locator(".chart").count():
                self.page.wait_for_timeout(300)  # charts redraw to the new width (debounced)
            # Usable on a phone: nothing wider than the screen (wide tables scroll inside).
            width = self.page.evaluate("document.documentElement.scrollWidth")
            if width > size["width"]:
                widest = self.page.evaluate(WIDEST, size["width"])
                raise AssertionError(f"{name}: {width} px wide at {size['width']} px: {widest}")
            self.page.screenshot(
                path=str(ARTIFACTS / f"{self.count:02d}-{name}-{label}.png"), full_page=True
            )
        self.page.set_viewport_size(DESKTOP)


def _sign_up(page: Any, platform: Platform, email: str) -> None:
    page.fill("input[name=email]", email)
    page.fill("input[name=password1]", PASSWORD)
    page.fill("input[name=password2]", PASSWORD)
    page.locator("form[action*='signup'] button[type=submit]").click()
    page.wait_for_load_state()
    page.goto(_confirmation_link(platform, email))
    page.locator("form button[type=submit]").click()
    page.wait_for_url(re.compile(r"/$"))


def test_a_newcomer_deploys_calls_and_shares_a_model_from_the_portal(
    portal_platform: Platform, chromium_path: Path
) -> None:
    from playwright.sync_api import expect, sync_playwright

    base = portal_platform.url
    started = time.monotonic()
    marks: list[tuple[str, float]] = []

    def mark(name: str) -> None:
        marks.append((name, time.monotonic() - started))

    with sync_playwright() as p:
        browser = p.chromium.launch(
            executable_path=str(chromium_path), headless=True, args=["--no-sandbox"]
        )
        context = browser.new_context(viewport=DESKTOP, base_url=base)
        context.set_default_timeout(15_000)
        errors: list[str] = []
        page = context.new_page()

        def watch(tab: Any) -> None:
            tab.on(
                "console",
                lambda m: (
                    errors.append(f"{tab.url}: {m.text} at {m.location}")
                    if m.type == "error"
                    else None
                ),
            )
            tab.on("pageerror", lambda e: errors.append(f"{tab.url}: {e}"))
            tab.on(
                "response",
                lambda r: (
                    errors.append(f"{r.request.method} {r.url}: {r.status}")
                    if r.status >= 400
                    else None
                ),
            )

        context.on("page", watch)
        watch(page)
        shots = Shots(page)

        # Sign up (open sign-up, the address confirmed from the e-mail): the empty dashboard
        page.goto("/accounts/signup/")
        _sign_up(page, portal_platform, "olivia@example.com")
        expect(page.get_by_text("No model code yet")).to_be_visible()
        expect(page.locator("#live")).to_have_text("live")
        page.keyboard.press("Tab")  # keyboard first: the skip link, then the menu
        expect(page.locator("a.skip")).to_be_focused()
        page.keyboard.press("Enter")
        expect(page.locator("#main")).to_be_focused()
        org_slug = page.locator("#org-switch").input_value()
        org_name = page.locator("h1").inner_text()
        shots.take("dashboard-empty")
        mark("signed-up")

        # The wizard: a catalog model on the mock engine, the local offer, deploy
        page.get_by_role("link", name="Create your first model code").click()
        page.get_by_label("Model code name").fill("support-bot")
        page.get_by_label("Model", exact=True).select_option("llama-3.1-8b")
        expect(page.get_by_label("Model id")).to_have_value("meta-llama/Llama-3.1-8B-Instruct")
        page.get_by_label("Engine").select_option("mock")
        page.get_by_label("GPUs").fill("0")
        page.get_by_label("GPUs").dispatch_event("change")
        local_offer = page.locator("#offer-table tr", has_text="local").locator("input[type=radio]")
        expect(local_offer).to_be_visible()
        expect(page.locator("#needs")).to_contain_text("estimated: 8.0B parameters")
        local_offer.check()
        shots.take("wizard")
        page.get_by_role("button", name="Create and deploy").click()
        expect(page.get_by_text("its first replica is starting")).to_be_visible()
        mark("deployed")

        # The model code's page shows its replica as soon as the worker creates it (events),
        # then the instance page follows it to ready without ever reloading
        page.evaluate("window.__neverReloaded = true")
        replica = page.locator("#replicas-table a").first
        expect(replica).to_be_visible(timeout=20_000)
        assert page.evaluate("window.__neverReloaded") is True
        shots.take("model-code")
        replica.click()
        page.evaluate("window.__neverReloaded = true")
        expect(page.locator("#instance-status")).to_have_text("ready", timeout=40_000)
        assert page.evaluate("window.__neverReloaded") is True, "the page was reloaded"
        expect(page.locator("#timeline")).to_contain_text("starting → ready")
        expect(page.locator("#heartbeat-age")).to_contain_text("s ago")
        shots.take("instance-ready")
        mark("ready")

        # A key, its secret shown once, handed to the playground
        page.goto("/keys/")
        page.get_by_label("Name").fill("playground")
        page.get_by_role("button", name="Create key").click()
        secret = page.locator("#secret").input_value()
        assert secret.startswith("sk-inv_")
        shots.take("key-created")

        # The usage page, open in a second tab before the chat
        usage = context.new_page()
        usage.goto("/usage/")
        chart = usage.locator("#usage-chart")
        expect(chart).to_have_attribute("data-rendered", "0")
        usage.evaluate("window.__neverReloaded = true")

        page.get_by_role("button", name="Use in the playground").click()
        expect(page.locator("#pg-key")).to_have_value(secret)
        page.get_by_label("Message").fill("Hello from the browser test")
        page.get_by_role("button", name="Send").click()
        expect(page.locator("#pg-send")).to_be_enabled(timeout=20_000)
        assert page.locator("#pg-error").is_hidden(), page.locator("#pg-error").inner_text()
        expect(page.locator("#pg-tokens")).to_have_text(re.compile(r"^\d+ / \d+$"))
        expect(page.locator("#pg-ttft")).to_have_text(re.compile(r"^\d+ ms$"))
        assert page.locator("#pg-conversation .assistant").inner_text().strip()
        shots.take("playground")
        mark("chatted")

        # The usage chart changes by itself (its fragment polls), the tab never reloaded
        expect(chart).to_have_attribute("data-rendered", re.compile(r"^[1-9]\d*$"), timeout=20_000)
        assert usage.evaluate("window.__neverReloaded") is True
        assert int(usage.locator("#usage-tokens").inner_text()) > 0
        usage.close()
        mark("usage-changed")
        page.goto("/usage/")
        shots.take("usage")

        # Invite a teammate; they sign up with the link and join the organization
        page.goto("/organization/")
        page.get_by_label("E-mail address").fill("max@example.com")
        page.get_by_role("button", name="Invite").click()
        link = page.locator("#invite-link").input_value()
        assert "/accounts/signup/?invitation=ivi_" in link
        shots.take("invitation")
        teammate = browser.new_context(viewport=PHONE, base_url=base).new_page()
        watch(teammate)
        teammate.goto(link)
        _sign_up(teammate, portal_platform, "max@example.com")
        expect(teammate.locator("#org-switch")).to_contain_text(org_name)
        teammate.locator("#org-switch").select_option(org_slug)
        teammate.get_by_role("button", name="Switch").click()
        expect(teammate.locator("#model-codes")).to_contain_text("support-bot")
        page.goto("/organization/")
        expect(page.locator("#members")).to_contain_text("max@example.com")
        shots.take("organization")
        mark("teammate-joined")
        browser.close()

    owner_org = Organization.objects.get(slug=org_slug, personal_user__email="olivia@example.com")
    max_ = User.objects.get(email="max@example.com")
    assert Membership.objects.get(user=max_, organization=owner_org).role == "member"
    (ARTIFACTS / "console-errors.txt").write_text("\n".join(errors) + "\n")
    assert not errors, "\n".join(errors)
    elapsed = time.monotonic() - started
    steps = ", ".join(f"{name} {at:.1f}s" for name, at in marks)
    print(f"browser walk: {elapsed:.1f}s ({steps}); {shots.count * 2} screenshots in {ARTIFACTS}")

"""The web pages' security headers, and Swagger UI served from our own origin.

Every page (portal, admin, sign-in, API docs, the API itself) carries a Content-Security-Policy
that allows only our origin, with no 'unsafe-inline' nor 'unsafe-eval': our few inline blocks
carry the response's nonce. The API docs page loads Swagger UI from drf-spectacular-sidecar's
static files, served by whitenoise after collectstatic (production) and by the finders (the
embedded mode): an air-gapped install gets the same page, and no public CDN is ever named.
"""

from __future__ import annotations

import re
import subprocess
from html.parser import HTMLParser
from pathlib import Path
from typing import Any
from urllib.parse import urljoin, urlsplit

import httpx
import pytest
from django.test import Client

from apps.accounts.models import User
from tests.processes import PYTHON, ROOT, ProcessGroup, embedded_env, free_port

PAGES = ["/", "/api/docs/", "/admin/login/", "/accounts/login/", "/api/v1/me/"]


class _Elements(HTMLParser):
    """The tags of a page with their attributes, and whether each script has a body."""

    def __init__(self) -> None:
        super().__init__()
        self.tags: list[tuple[str, dict[str, str]]] = []
        self._open: dict[str, str] | None = None
        self.inline_scripts: list[dict[str, str]] = []

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        values = {k: v or "" for k, v in attrs}
        self.tags.append((tag, values))
        self._open = values if tag == "script" else None

    def handle_data(self, data: str) -> None:
        if self._open is not None and data.strip() and "src" not in self._open:
            self.inline_scripts.append(self._open)

    def handle_endtag(self, tag: str) -> None:
        self._open = None


def _policy(response: Any) -> dict[str, list[str]]:
    header = response.headers["Content-Security-Policy"]
    return {
        name: values
        for name, *values in (part.split() for part in header.split(";") if part.strip())
    }


def _elements(html: str) -> _Elements:
    parser = _Elements()
    parser.feed(html)
    return parser


class _Browser:
    """Olivia signed in, except on the sign-in pages (which redirect someone signed in)."""

    def __init__(self, user: User) -> None:
        self.signed_in = Client()
        self.signed_in.force_login(user)
        self.anonymous = Client()

    def get(self, path: str) -> Any:
        client = self.anonymous if path.endswith("/login/") else self.signed_in
        return client.get(path)


@pytest.fixture
def browser(owner: User) -> _Browser:
    return _Browser(owner)


@pytest.mark.parametrize("path", PAGES)
def test_it_sends_a_strict_csp_and_the_security_headers(browser: _Browser, path: str) -> None:
    response = browser.get(path)

    assert response.status_code == 200, response.content[:300]
    policy = _policy(response)
    assert policy["default-src"] == ["'self'"]
    assert policy["object-src"] == ["'none'"]
    assert policy["frame-ancestors"] == ["'none'"]
    assert policy["base-uri"] == ["'self'"]
    for directive in ("script-src", "style-src"):
        sources = policy[directive]
        assert sources[0] == "'self'"
        assert all(s.startswith("'nonce-") for s in sources[1:]), sources
    header = response.headers["Content-Security-Policy"]
    assert "unsafe-inline" not in header and "unsafe-eval" not in header
    assert "http:" not in header and "https:" not in header and "*" not in header
    assert response.headers["X-Content-Type-Options"] == "nosniff"
    assert response.headers["Referrer-Policy"] == "same-origin"
    assert response.headers["Cross-Origin-Opener-Policy"] == "same-origin"
    assert response.headers["X-Frame-Options"] == "DENY"


@pytest.mark.parametrize("path", ["/", "/api/docs/", "/admin/login/", "/accounts/login/"])
def test_it_runs_no_inline_script_or_style_without_the_nonce(browser: _Browser, path: str) -> None:
    response = browser.get(path)
    nonces = {s.removeprefix("'nonce-").rstrip("'") for s in _policy(response)["script-src"][1:]}
    page = _elements(response.content.decode())

    for attrs in page.inline_scripts:
        # A JSON data block is not run; any script that runs must carry this response's nonce.
        assert attrs.get("type") == "application/json" or attrs.get("nonce") in nonces, attrs
    for tag, attrs in page.tags:
        assert not [a for a in attrs if a.startswith("on")], (tag, attrs)
        if tag == "style":
            assert attrs.get("nonce") in nonces, attrs
        if path in ("/", "/api/docs/"):
            # Our own templates: no style attribute either (CSP blocks those without a nonce).
            assert "style" not in attrs, (tag, attrs)


def _assets_of(html: str, page_url: str) -> list[str]:
    page = _elements(html)
    urls = [
        attrs[key]
        for tag, attrs in page.tags
        for key in ("src", "href")
        if key in attrs and tag in ("script", "link", "img")
    ]
    return [urljoin(page_url, u) for u in urls]


def _assert_docs_served_locally(base_url: str) -> None:
    page_url = base_url + "/api/docs/"
    with httpx.Client(timeout=10) as http:
        response = http.get(page_url)
        assert response.status_code == 200, response.text[:300]
        assert "Content-Security-Policy" in response.headers
        assert not re.search(r"https?://", response.text), "the page names another origin"
        assets = _assets_of(response.text, page_url)
        kinds = {Path(urlsplit(u).path).name.split(".")[0] for u in assets}
        assert {"swagger-ui-bundle", "swagger-ui-standalone-preset", "swagger-ui"} <= kinds
        for url in assets:
            assert urlsplit(url).netloc == urlsplit(base_url).netloc, url
            asset = http.get(url)
            assert asset.status_code == 200, (url, asset.status_code)
            assert len(asset.content) > 100, url
            if url.endswith(".js") or "script" in url:
                assert "javascript" in asset.headers["content-type"], url
        bundle = next(u for u in assets if "swagger-ui-bundle" in u)
        assert b"SwaggerUIBundle" in http.get(bundle).content


@pytest.mark.slow
def test_it_serves_swagger_ui_from_collectstatic_in_production(
    processes: ProcessGroup, tmp_path: Path
) -> None:
    static_root = tmp_path / "static"
    env = {**processes.env, "STATIC_ROOT": str(static_root)}
    subprocess.run(
        [PYTHON, "manage.py", "collectstatic", "--noinput", "-v0"], cwd=ROOT, env=env, check=True
    )
    assert list(static_root.glob("drf_spectacular_sidecar/swagger-ui-dist/swagger-ui-bundle.*.js"))

    _, url = processes.web(STATIC_ROOT=str(static_root))

    _assert_docs_served_locally(url)


@pytest.mark.slow
def test_it_serves_swagger_ui_in_the_embedded_mode(tmp_path: Path) -> None:
    env = embedded_env(tmp_path / "state")
    group = ProcessGroup(env, tmp_path)
    try:
        port = free_port()
        url = f"http://127.0.0.1:{port}"
        proc = group.start(
            "embedded-web",
            [PYTHON, "-m", "uvicorn", "inventiv.asgi:application", "--port", str(port)],
            INVENTIV_PUBLIC_URL=url,
        )
        group.wait_http(proc, url + "/healthz")

        _assert_docs_served_locally(url)
    finally:
        group.stop_all()

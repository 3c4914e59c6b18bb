"""Helpers to talk to a running platform over real HTTP and WebSocket, as a browser would."""

from __future__ import annotations

import json
from typing import Any

import httpx
from websockets.sync.client import ClientConnection, connect


def login(base_url: str, email: str, password: str) -> httpx.Client:
    """Sign in through the portal's login form (allauth); the client keeps the session."""
    client = httpx.Client(base_url=base_url, timeout=10, follow_redirects=False)
    client.get("/accounts/login/").raise_for_status()
    response = client.post(
        "/accounts/login/",
        data={
            "login": email,
            "password": password,
            "csrfmiddlewaretoken": client.cookies["csrftoken"],
        },
        headers={"Referer": base_url + "/accounts/login/"},
    )
    assert response.status_code == 302, response.text[:2000]
    assert "sessionid" in client.cookies
    return client


def csrf_headers(client: httpx.Client, base_url: str) -> dict[str, str]:
    return {"X-CSRFToken": client.cookies["csrftoken"], "Referer": base_url + "/"}


def websocket(base_url: str, client: httpx.Client, path: str = "/ws/events/") -> ClientConnection:
    cookie = "; ".join(f"{k}={v}" for k, v in client.cookies.items())
    url = base_url.replace("http://", "ws://") + path
    return connect(url, additional_headers={"Cookie": cookie, "Origin": base_url}, open_timeout=10)


def receive_until(ws: ClientConnection, event: str, timeout: float = 10.0) -> dict[str, Any]:
    """Read messages until one named ``event`` arrives (fails after ``timeout`` seconds)."""
    import time

    deadline = time.monotonic() + timeout
    while True:
        remaining = deadline - time.monotonic()
        if remaining <= 0:
            raise AssertionError(f"no {event} within {timeout}s")
        message: dict[str, Any] = json.loads(ws.recv(timeout=remaining))
        if message["event"] == event:
            return message

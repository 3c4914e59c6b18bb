"""A tiny control plane for agent tests: hands out a credential, serves desired states, and
records every heartbeat. Runs ``http.server`` in a thread of the test process."""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Callable
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

from agent.protocol import HEARTBEAT_PATH, REGISTER_PATH


def _error(code: str, message: str) -> dict[str, Any]:
    return {
        "error": {"message": message, "type": "invalid_request_error", "param": None, "code": code}
    }


class FakeControlPlane:
    def __init__(self, *, bootstrap_token: str, desired: dict[str, Any], interval: float = 0.2):
        self.bootstrap_token = bootstrap_token
        self.credential = "cred-" + bootstrap_token[::-1]
        self.instance_id = "inst-1"
        self.interval = interval
        self.desired = desired
        self.registrations: list[dict[str, Any]] = []
        self.heartbeats: list[dict[str, Any]] = []
        self.register_failures = 0  # answer this many registrations with 503 first
        self.heartbeat_status: int | None = None  # e.g. 401 to revoke, 503 to be "down"
        self.bootstrap_used = False  # the token is one-time: a second registration gets 401
        self._lock = threading.Lock()
        self._server = ThreadingHTTPServer(("127.0.0.1", 0), self._handler())
        self._server.daemon_threads = True
        self._thread = threading.Thread(target=self._server.serve_forever, daemon=True)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self._server.server_address[1]}"

    def start(self) -> FakeControlPlane:
        self._thread.start()
        return self

    def close(self) -> None:
        self._server.shutdown()
        self._server.server_close()

    def set_desired(self, desired: dict[str, Any]) -> None:
        with self._lock:
            self.desired = desired

    def wait_heartbeat(
        self,
        predicate: Callable[[dict[str, Any]], bool],
        *,
        after: int = 0,
        timeout: float = 20.0,
        message: str = "heartbeat",
    ) -> tuple[int, dict[str, Any]]:
        """Return ``(index, heartbeat)`` of the first heartbeat from ``after`` on that matches."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            with self._lock:
                beats = list(enumerate(self.heartbeats))[after:]
            for i, beat in beats:
                if predicate(beat):
                    return i, beat
            time.sleep(0.02)
        states = [b["state"] for b in self.heartbeats[after:]][-20:]
        raise AssertionError(f"timed out waiting for {message}; last states: {states}")

    def _handler(self) -> type[BaseHTTPRequestHandler]:
        cp = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, format: str, *args: Any) -> None:
                pass

            def _reply(self, status: int, body: dict[str, Any]) -> None:
                data = json.dumps(body).encode()
                self.send_response(status)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

            def do_POST(self) -> None:
                length = int(self.headers.get("Content-Length", "0"))
                body = json.loads(self.rfile.read(length) or b"{}")
                if self.path == REGISTER_PATH:
                    with cp._lock:
                        cp.registrations.append(body)
                        if cp.register_failures > 0:
                            cp.register_failures -= 1
                            return self._reply(503, _error("unavailable", "try later"))
                        if body.get("bootstrap_token") != cp.bootstrap_token or cp.bootstrap_used:
                            return self._reply(401, _error("invalid_bootstrap_token", "no"))
                        cp.bootstrap_used = True
                        return self._reply(
                            200,
                            {
                                "instance_id": cp.instance_id,
                                "credential": cp.credential,
                                "heartbeat_interval_s": cp.interval,
                                "desired": cp.desired,
                            },
                        )
                if self.path == HEARTBEAT_PATH:
                    with cp._lock:
                        if self.headers.get("Authorization") != f"Bearer {cp.credential}":
                            return self._reply(401, _error("invalid_credential", "who?"))
                        if cp.heartbeat_status is not None:
                            return self._reply(cp.heartbeat_status, _error("nope", "nope"))
                        cp.heartbeats.append(body)
                        return self._reply(
                            200,
                            {
                                "heartbeat_interval_s": cp.interval,
                                "desired": cp.desired,
                            },
                        )
                return self._reply(404, _error("not_found", self.path))

        return Handler

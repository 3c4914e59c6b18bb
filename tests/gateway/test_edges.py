"""The gateway's edges (issue 15): billing cannot be bypassed, bad input is a 400 in the envelope,
nothing unexpected is a plain-text 500, and what a client sends is bounded in size and time."""

from __future__ import annotations

import http.server
import select
import socket
import threading
import time
from pathlib import Path
from typing import Any

import httpx
import orjson
from django.utils import timezone

from apps.instances.choices import InstanceStatus
from apps.instances.models import Instance, Provider
from apps.models.choices import RoutingPolicy
from inventiv.crypto import encrypt
from tests.gateway.conftest import flushed_usage, make_model_code
from tests.processes import PYTHON, free_port

LONG_PROMPT = [{"role": "user", "content": " ".join(["word"] * 30)}]  # 31 prompt tokens
HELLO = [{"role": "user", "content": "hello"}]


def _post(gateway: Any, key: str, body: dict[str, Any] | bytes, **headers: str) -> httpx.Response:
    content = body if isinstance(body, bytes) else orjson.dumps(body)
    return httpx.post(
        f"{gateway.url}/v1/chat/completions",
        content=content,
        headers={"Authorization": f"Bearer {key}", "Content-Type": "application/json", **headers},
        timeout=10,
    )


def _sse_chunks(response: httpx.Response) -> list[dict[str, Any]]:
    chunks = []
    for line in response.text.splitlines():
        if line.startswith("data: {"):
            chunks.append(orjson.loads(line[6:]))
    return chunks


def _envelope(response: httpx.Response | bytes) -> dict[str, Any]:
    raw = response if isinstance(response, bytes) else response.content
    error: dict[str, Any] = orjson.loads(raw)["error"]
    assert set(error) == {"message", "type", "param", "code"}
    return error


# --- billing ---------------------------------------------------------------------------------


def test_a_stream_with_null_stream_options_is_billed_and_counted_in_full(
    model_code, start_engine, start_gateway, new_key
):
    # Given a key allowed 20 tokens per minute, and another without limits
    engine = start_engine(model_code)
    gateway = start_gateway()
    _, limited = new_key(tpm_limit=20)
    _, free = new_key(name="free")
    stream = {"model": "sales-bot", "messages": LONG_PROMPT, "stream": True, "max_tokens": 2}

    # When a stream says "stream_options": null (31 prompt + 2 completion tokens), then another
    # request follows; and a stream says include_usage: false
    null_options = _post(gateway, limited, {**stream, "stream_options": None})
    after = _post(gateway, limited, {"model": "sales-bot", "messages": HELLO})
    no_usage = _post(gateway, free, {**stream, "stream_options": {"include_usage": False}})

    # Then neither client gets a usage chunk (it did not ask), both are billed the engine's
    # exact counts, and the token bucket counted the prompt: the next request is refused
    for answer in (null_options, no_usage):
        assert answer.status_code == 200
        chunks = _sse_chunks(answer)
        assert chunks and all("usage" not in c for c in chunks)
        assert all(c["choices"] for c in chunks)
    assert after.status_code == 429
    records = flushed_usage(3)
    billed = sorted((r.prompt_tokens, r.completion_tokens) for r in records if r.status_code == 200)
    assert billed == [(31, 2), (31, 2)]
    assert engine.generated() == (62, 4)


# --- max_tokens --------------------------------------------------------------------------------


def test_max_tokens_is_checked_against_the_model_codes_context(
    owner_org, start_engine, start_gateway, new_key
):
    # Given a model code with a 64-token context and one that declares none
    small = make_model_code(owner_org, "small-bot", max_model_len=64)
    make_model_code(owner_org, "sales-bot")
    start_engine(small)
    gateway = start_gateway()
    _, key = new_key()

    def ask(model: str, **extra: Any) -> httpx.Response:
        return _post(gateway, key, {"model": model, "messages": HELLO, **extra})

    # When max_tokens is huge, over the context, not an integer; or max_completion_tokens is
    huge = ask("sales-bot", max_tokens=10**12)
    over = ask("small-bot", max_tokens=65)
    completion_over = ask("small-bot", max_completion_tokens=65)
    not_int = ask("small-bot", max_tokens="12")
    a_bool = ask("small-bot", max_tokens=True)
    fits = ask("small-bot", max_tokens=3)

    # Then each is a 400 naming the parameter, before any engine is called; a fitting one works
    assert [r.status_code for r in (huge, over, completion_over, not_int, a_bool)] == [400] * 5
    assert _envelope(huge)["param"] == "max_tokens"
    assert _envelope(huge)["code"] == "invalid_value"
    assert "64" in _envelope(over)["message"]
    assert _envelope(completion_over)["param"] == "max_completion_tokens"
    assert _envelope(not_int)["param"] == _envelope(a_bool)["param"] == "max_tokens"
    assert fits.status_code == 200
    assert fits.json()["usage"]["completion_tokens"] == 3


# --- prefix-aware routing and the catch-all ------------------------------------------------------


def test_a_non_string_text_part_is_a_400_on_prefix_aware_model_codes(
    owner_org, start_engine, start_gateway, new_key
):
    model = make_model_code(owner_org, "sales-bot", routing_policy=RoutingPolicy.PREFIX_AWARE)
    start_engine(model)
    gateway = start_gateway()
    _, key = new_key()
    parts = [{"role": "user", "content": [{"type": "text", "text": {"nested": 1}}]}]

    answer = _post(gateway, key, {"model": "sales-bot", "messages": parts})
    good = _post(
        gateway,
        key,
        {
            "model": "sales-bot",
            "messages": [{"role": "user", "content": [{"type": "text", "text": "a b"}]}],
        },
    )

    assert answer.status_code == 400
    assert answer.headers["content-type"] == "application/json"
    assert _envelope(answer)["param"] == "messages"
    assert good.status_code == 200
    statuses = sorted(r.status_code for r in flushed_usage(2))
    assert statuses == [200, 400]


class _GarbageUsageEngine(http.server.BaseHTTPRequestHandler):
    """An engine that answers 200 with a usage the gateway cannot read."""

    def do_POST(self) -> None:
        self.rfile.read(int(self.headers["Content-Length"]))
        body = orjson.dumps(
            {
                "id": "x",
                "object": "chat.completion",
                "choices": [],
                "usage": {"prompt_tokens": "lots", "completion_tokens": 1},
            }
        )
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *args: Any) -> None:
        pass


def test_an_unexpected_failure_is_an_envelope_500_recorded_as_failed(
    model_code, start_gateway, new_key
):
    # Given an engine whose answer makes the gateway fail unexpectedly
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _GarbageUsageEngine)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    provider, _ = Provider.objects.get_or_create(name="local-test", defaults={"kind": "local"})
    Instance.objects.create(
        organization=model_code.organization,
        llm_model=model_code,
        provider=provider,
        status=InstanceStatus.READY,
        status_changed_at=timezone.now(),
        ready_at=timezone.now(),
        engine_host="127.0.0.1",
        engine_port=server.server_address[1],
        engine_secret_encrypted=encrypt("s"),
    )
    gateway = start_gateway()
    _, key = new_key()

    try:
        # When a request is answered by it
        answer = _post(gateway, key, {"model": "sales-bot", "messages": HELLO})
    finally:
        server.shutdown()

    # Then it is the envelope's 500 (not a plain-text one), recorded as failed
    assert answer.status_code == 500
    assert answer.headers["content-type"] == "application/json"
    assert _envelope(answer)["code"] == "server_error"
    [record] = flushed_usage(1)
    assert (record.status_code, record.error_code) == (500, "server_error")


# --- the HTTP edges -------------------------------------------------------------------------


def test_the_bearer_scheme_is_case_insensitive_and_model_names_are_bounded(
    model_code, start_engine, start_gateway, new_key
):
    start_engine(model_code)
    gateway = start_gateway()
    _, key = new_key()

    lower = httpx.post(
        f"{gateway.url}/v1/chat/completions",
        json={"model": "sales-bot", "messages": HELLO},
        headers={"Authorization": f"bearer {key}"},
        timeout=10,
    )
    listing = httpx.get(f"{gateway.url}/v1/models", headers={"Authorization": f"BEARER {key}"})
    long_unknown = _post(gateway, key, {"model": "m" * 256, "messages": HELLO})
    too_long = _post(gateway, key, {"model": "m" * 257, "messages": HELLO})
    huge = _post(gateway, key, {"model": "m" * (4 * 1024 * 1024), "messages": HELLO})
    path_name = httpx.get(
        f"{gateway.url}/v1/models/{'n' * 5000}", headers={"Authorization": f"Bearer {key}"}
    )

    assert lower.status_code == 200 and listing.status_code == 200
    assert long_unknown.status_code == 404
    assert len(_envelope(long_unknown)["message"]) < 200  # the name is not echoed whole
    assert too_long.status_code == huge.status_code == 400
    assert _envelope(too_long)["param"] == _envelope(huge)["param"] == "model"
    assert len(huge.content) < 500
    assert path_name.status_code == 404 and len(path_name.content) < 500


def _gateway_role(processes: Any, **env: str) -> tuple[Any, str, int]:
    """The standalone gateway with a 1 s keep-alive (and head) deadline."""
    port = free_port()
    proc = processes.start(
        "gateway-edges",
        [
            PYTHON,
            "-m",
            "apps.gateway",
            "--host",
            "127.0.0.1",
            "--port",
            str(port),
            "--timeout-keep-alive",
            "1",
        ],
        **env,
    )
    url = f"http://127.0.0.1:{port}"
    processes.wait_http(proc, url + "/healthz")
    return proc, url, port


def _raw(port: int, data: bytes, *, read_timeout: float = 5.0) -> bytes:
    with socket.create_connection(("127.0.0.1", port), timeout=read_timeout) as sock:
        sock.sendall(data)
        return _read_all(sock)


def _read_all(sock: socket.socket) -> bytes:
    out = b""
    while True:
        try:
            chunk = sock.recv(65536)
        except (ConnectionResetError, TimeoutError):
            break
        if not chunk:
            break
        out += chunk
    return out


def _trickle(sock: socket.socket, data: bytes, interval: float = 0.1) -> float:
    """Send ``data`` a byte every ``interval`` until the server answers (or closes); return how
    long that took."""
    start = time.monotonic()
    for byte in data:
        try:
            sock.sendall(bytes([byte]))
        except (BrokenPipeError, ConnectionResetError):
            break
        if select.select([sock], [], [], interval)[0]:
            break
    return time.monotonic() - start


def _split(response: bytes) -> tuple[int, dict[str, str], bytes]:
    head, _, body = response.partition(b"\r\n\r\n")
    lines = head.decode("latin-1").split("\r\n")
    headers = dict(line.lower().split(": ", 1) for line in lines[1:] if ": " in line)
    return int(lines[0].split()[1]), headers, body


def _rss_kb(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    raise AssertionError("no VmRSS")


def test_malformed_http_oversized_and_trickled_heads_get_the_envelope(processes):
    proc, _, port = _gateway_role(processes)

    # Malformed HTTP: a 400 in the envelope (not uvicorn's plain text)
    status, headers, body = _split(_raw(port, b"NOT HTTP AT ALL\r\n\r\n"))
    assert status == 400 and headers["content-type"] == "application/json"
    assert _envelope(body)["code"] == "invalid_request"

    # An unterminated 16 MB header: refused with 431 once past the limit, memory unchanged
    before = _rss_kb(proc.pid)
    with socket.create_connection(("127.0.0.1", port), timeout=5) as sock:
        sock.sendall(b"GET /v1/models HTTP/1.1\r\nHost: x\r\nX-Big: ")
        refused_early = False
        try:
            for _ in range(256):
                sock.sendall(b"a" * 65536)
        except (BrokenPipeError, ConnectionResetError):
            refused_early = True
        answer = _read_all(sock)
    if answer:
        status, _, body = _split(answer)
        assert status == 431 and _envelope(body)["code"] == "request_header_fields_too_large"
    assert refused_early or answer
    assert _rss_kb(proc.pid) - before < 8 * 1024

    # Headers trickled one byte at a time: cut off at the head deadline (1 s) with 408
    with socket.create_connection(("127.0.0.1", port), timeout=10) as sock:
        head = b"GET /v1/models HTTP/1.1\r\nHost: localhost\r\nX-Slow: " + b"s" * 80
        elapsed = _trickle(sock, head)
        answer = _read_all(sock)
    assert elapsed < 3
    status, _, body = _split(answer)
    assert status == 408 and _envelope(body)["code"] == "request_timeout"


def test_a_trickled_body_is_cut_off_at_the_body_deadline(
    processes, model_code, start_engine, new_key
):
    start_engine(model_code)
    _, _, port = _gateway_role(processes, GATEWAY_BODY_TIMEOUT_S="1")
    _, key = new_key()
    body = orjson.dumps({"model": "sales-bot", "messages": HELLO})

    with socket.create_connection(("127.0.0.1", port), timeout=10) as sock:
        sock.sendall(
            b"POST /v1/chat/completions HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
            + f"Authorization: Bearer {key}\r\nContent-Length: {len(body)}\r\n\r\n".encode()
        )
        elapsed = _trickle(sock, body)
        answer = _read_all(sock)
    status, _, raw = _split(answer)
    assert status == 408
    assert _envelope(raw)["code"] == "request_timeout"
    assert elapsed < 3


def _web_role(processes: Any) -> tuple[str, int]:
    """The web role with the HTTP options compose.yaml gives it."""
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    proc = processes.start(
        "web-edges",
        [
            PYTHON,
            "-m",
            "uvicorn",
            "inventiv.asgi:application",
            "--host",
            "127.0.0.1",
            "--port",
            str(port),
            "--lifespan",
            "off",
            "--http",
            "apps.gateway.server:HttpProtocol",
            "--h11-max-incomplete-event-size",
            "65536",
            "--timeout-keep-alive",
            "1",
            "--limit-concurrency",
            "200",
        ],
        INVENTIV_PUBLIC_URL=url,
    )
    processes.wait_http(proc, url + "/healthz")
    return url, port


def test_every_path_under_v1_of_the_web_role_answers_in_the_envelope(processes):
    url, port = _web_role(processes)

    answers = {
        path: httpx.request(method, url + path, timeout=10)
        for method, path in [
            ("GET", "/v1"),
            ("GET", "/v1/"),
            ("GET", "/v1/no/such/path"),
            ("GET", "/V1/models"),
            ("GET", "//v1/models"),
            ("DELETE", "/v1/chat/completions"),
            ("OPTIONS", "/v1/models"),
        ]
    }
    malformed = _split(_raw(port, b"GET /v1/models HTTP/1.1\r\nBad Header\r\n\r\n"))

    for path, answer in answers.items():
        assert answer.headers["content-type"] == "application/json", path
        assert answer.status_code in (401, 404, 405), path
        _envelope(answer)
    assert answers["/v1/no/such/path"].status_code == 404
    assert answers["/v1/chat/completions"].status_code == 405
    assert malformed[0] == 400 and _envelope(malformed[2])["code"] == "invalid_request"
    # The rest of the web role is untouched
    assert httpx.get(url + "/healthz", timeout=10).status_code == 200

"""The mock engine's OpenAI-compatible API, metrics and fault injection, over real HTTP."""

from __future__ import annotations

import base64
import json
import math
import struct
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import openai
import pytest

from tests.agent.conftest import ENGINE_KEY, MockEngine, start_mock_engine
from tests.processes import wait_for

CHAT = {"model": "tiny", "messages": [{"role": "user", "content": "hello mock world"}]}


@pytest.fixture(scope="module")
def engine(tmp_path_factory: pytest.TempPathFactory) -> Iterator[MockEngine]:
    e = start_mock_engine(tmp_path_factory.mktemp("mock"), "--embedding-dim", "8")
    yield e
    e.client.close()
    e.proc.stop()


def sse_events(response: httpx.Response) -> list[Any]:
    events: list[Any] = []
    for block in response.text.split("\n\n"):
        if not block:
            continue
        assert block.startswith("data: "), block
        data = block[len("data: ") :]
        events.append(data if data == "[DONE]" else json.loads(data))
    return events


def test_it_answers_a_chat_completion_deterministically(engine: MockEngine) -> None:
    r = engine.client.post("/v1/chat/completions", json={**CHAT, "max_tokens": 5})
    assert r.status_code == 200
    body = r.json()
    assert body["object"] == "chat.completion"
    assert body["model"] == "tiny"
    choice = body["choices"][0]
    assert choice["finish_reason"] == "length"
    assert choice["message"]["role"] == "assistant"
    words = choice["message"]["content"].split()
    assert len(words) == 5 and all(w.startswith("tok") for w in words)
    assert body["usage"] == {
        "prompt_tokens": 4,  # 3 words + 1 per message
        "completion_tokens": 5,
        "total_tokens": 9,
        "prompt_tokens_details": None,
    }
    again = engine.client.post("/v1/chat/completions", json={**CHAT, "max_tokens": 5}).json()
    assert again["choices"][0]["message"]["content"] == choice["message"]["content"]
    assert again["id"] != body["id"]
    other = {**CHAT, "messages": [{"role": "user", "content": "something else"}], "max_tokens": 5}
    other_text = engine.client.post("/v1/chat/completions", json=other).json()
    assert other_text["choices"][0]["message"]["content"] != choice["message"]["content"]


def test_it_uses_max_completion_tokens_then_the_default(engine: MockEngine) -> None:
    r = engine.client.post("/v1/chat/completions", json={**CHAT, "max_completion_tokens": 3})
    assert r.json()["usage"]["completion_tokens"] == 3
    r = engine.client.post("/v1/chat/completions", json=CHAT)
    assert r.json()["usage"]["completion_tokens"] == 16


def test_it_answers_a_text_completion(engine: MockEngine) -> None:
    r = engine.client.post("/v1/completions", json={"prompt": "one two", "max_tokens": 2})
    body = r.json()
    assert body["object"] == "text_completion"
    assert body["choices"][0]["finish_reason"] == "length"
    assert len(body["choices"][0]["text"].split()) == 2
    assert body["usage"]["prompt_tokens"] == 2


def test_it_streams_a_chat_completion_without_usage(engine: MockEngine) -> None:
    r = engine.client.post("/v1/chat/completions", json={**CHAT, "max_tokens": 4, "stream": True})
    assert r.headers["content-type"].startswith("text/event-stream")
    events = sse_events(r)
    assert events[-1] == "[DONE]"
    chunks = events[:-1]
    assert all("usage" not in c for c in chunks)
    assert chunks[0]["choices"][0]["delta"] == {"role": "assistant", "content": ""}
    assert [c["choices"][0]["finish_reason"] for c in chunks[1:]] == [None, None, None, "length"]
    text = "".join(c["choices"][0]["delta"].get("content", "") for c in chunks)
    plain = engine.client.post("/v1/chat/completions", json={**CHAT, "max_tokens": 4}).json()
    assert text == plain["choices"][0]["message"]["content"]
    assert len({c["id"] for c in chunks}) == 1


def test_it_streams_a_final_usage_chunk_when_asked(engine: MockEngine) -> None:
    req = {**CHAT, "max_tokens": 3, "stream": True, "stream_options": {"include_usage": True}}
    events = sse_events(engine.client.post("/v1/chat/completions", json=req))
    assert events[-1] == "[DONE]"
    final = events[-2]
    assert final["choices"] == []
    assert final["usage"]["completion_tokens"] == 3
    assert final["usage"]["prompt_tokens"] == 4
    assert all(c["usage"] is None for c in events[:-2])


def test_it_streams_a_text_completion_with_usage(engine: MockEngine) -> None:
    req = {"prompt": "x y z", "max_tokens": 2, "stream": True,
           "stream_options": {"include_usage": True}}  # fmt: skip
    events = sse_events(engine.client.post("/v1/completions", json=req))
    assert [e["choices"][0]["text"][:3] for e in events[:2]] == ["tok", "tok"]
    assert events[1]["choices"][0]["finish_reason"] == "length"
    assert events[2]["choices"] == [] and events[2]["usage"]["total_tokens"] == 5
    assert events[3] == "[DONE]"


def test_it_works_with_the_openai_sdk(engine: MockEngine) -> None:
    client = openai.OpenAI(base_url=engine.url + "/v1", api_key=ENGINE_KEY, max_retries=0)
    stream = client.chat.completions.create(
        model="tiny",
        messages=[{"role": "user", "content": "hi"}],
        max_tokens=3,
        stream=True,
        stream_options={"include_usage": True},
    )
    chunks = list(stream)
    assert chunks[-1].usage is not None and chunks[-1].usage.completion_tokens == 3
    vectors = client.embeddings.create(model="tiny", input=["a", "b"])  # base64 by default
    assert [len(d.embedding) for d in vectors.data] == [8, 8]
    assert client.models.list().data[0].id == "tiny"
    client.close()


def test_it_returns_deterministic_unit_embeddings(engine: MockEngine) -> None:
    r = engine.client.post("/v1/embeddings", json={"model": "tiny", "input": ["alpha", "beta"]})
    body = r.json()
    first, second = (d["embedding"] for d in body["data"])
    assert len(first) == 8
    assert math.isclose(sum(v * v for v in first), 1.0, rel_tol=1e-9)
    assert first != second
    again = engine.client.post("/v1/embeddings", json={"input": "alpha"}).json()
    assert again["data"][0]["embedding"] == first
    b64 = engine.client.post(
        "/v1/embeddings", json={"input": "alpha", "encoding_format": "base64"}
    ).json()
    decoded = struct.unpack("<8f", base64.b64decode(b64["data"][0]["embedding"]))
    assert all(math.isclose(a, b, abs_tol=1e-6) for a, b in zip(decoded, first, strict=True))


def test_it_lists_the_served_model_and_answers_health(engine: MockEngine) -> None:
    models = engine.client.get("/v1/models").json()
    assert [(m["id"], m["root"]) for m in models["data"]] == [("tiny", "org/tiny-model")]
    assert httpx.get(engine.url + "/health").status_code == 200


@pytest.mark.parametrize(
    ("method", "path"),
    [
        ("GET", "/v1/models"),
        ("POST", "/v1/chat/completions"),
        ("POST", "/v1/embeddings"),
        ("POST", "/mock/control"),
        ("GET", "/mock/last_request"),
    ],
)
def test_it_requires_the_engine_key(engine: MockEngine, method: str, path: str) -> None:
    for headers in ({}, {"Authorization": "Bearer wrong"}):
        r = httpx.request(method, engine.url + path, headers=headers, json=CHAT)
        assert r.status_code == 401
        assert r.json()["error"]["code"] == "invalid_api_key"


def test_it_rejects_an_unknown_model_and_bad_input(engine: MockEngine) -> None:
    r = engine.client.post("/v1/chat/completions", json={**CHAT, "model": "gpt-9"})
    assert r.status_code == 404 and r.json()["error"]["code"] == "model_not_found"
    r = engine.client.post("/v1/chat/completions", content=b"{nope")
    assert r.status_code == 400 and r.json()["error"]["code"] == "invalid_json"
    r = engine.client.post("/v1/chat/completions", json={**CHAT, "max_tokens": 0})
    assert r.status_code == 400 and r.json()["error"]["param"] == "max_tokens"


def test_it_records_the_last_request_verbatim(engine: MockEngine) -> None:
    req = {**CHAT, "seed": 7, "tools": [{"type": "function", "function": {"name": "f"}}],
           "response_format": {"type": "json_object"}}  # fmt: skip
    engine.client.post("/v1/chat/completions", json=req)
    assert engine.client.get("/mock/last_request").json() == req


def test_its_metrics_move_with_traffic(engine: MockEngine) -> None:
    before_gen = engine.metric("vllm:generation_tokens_total")
    before_prompt = engine.metric("vllm:prompt_tokens_total")
    before_ok = engine.metric("vllm:request_success_total")
    before_e2e = engine.metric("vllm:e2e_request_latency_seconds_count")
    engine.client.post("/v1/chat/completions", json={**CHAT, "max_tokens": 6})
    assert engine.metric("vllm:generation_tokens_total") == before_gen + 6
    assert engine.metric("vllm:prompt_tokens_total") == before_prompt + 4
    assert engine.metric("vllm:request_success_total") == before_ok + 1
    assert engine.metric("vllm:e2e_request_latency_seconds_count") == before_e2e + 1
    text = engine.client.get("/metrics").text
    assert 'vllm:time_to_first_token_seconds_bucket{model_name="tiny",le="+Inf"}' in text
    assert engine.metric("vllm:num_requests_running") == 0
    assert engine.metric("vllm:num_requests_waiting") == 0
    assert 0 <= engine.metric("vllm:kv_cache_usage_perc") <= 1


def test_it_fails_the_next_requests_on_demand(engine: MockEngine) -> None:
    r = engine.client.post("/mock/control", json={"fail_next": 2, "fail_status": 503})
    assert r.json()["fail_next"] == 2
    statuses = [engine.client.post("/v1/chat/completions", json=CHAT).status_code
                for _ in range(3)]  # fmt: skip
    assert statuses == [503, 503, 200]
    engine.client.post("/mock/control", json={"fail_status": 500})


def test_it_hangs_a_request_on_demand_and_counts_it_running(engine: MockEngine) -> None:
    engine.client.post("/mock/control", json={"hang_next": 1})
    with pytest.raises(httpx.ReadTimeout):
        engine.client.post("/v1/chat/completions", json=CHAT, timeout=0.5)
    # The client gave up and closed the connection: the mock notices the disconnect.
    wait_for(lambda: engine.metric("vllm:num_requests_running") == 0, message="running == 0")
    assert engine.client.post("/v1/chat/completions", json=CHAT).status_code == 200


def test_it_counts_in_flight_requests(tmp_path: Path) -> None:
    engine = start_mock_engine(tmp_path, "--token-rate", "20")
    try:
        with (
            httpx.Client(timeout=10) as client,
            client.stream(
                "POST",
                engine.url + "/v1/chat/completions",
                headers={"Authorization": f"Bearer {ENGINE_KEY}"},
                json={**CHAT, "max_tokens": 10, "stream": True},
            ) as response,
        ):
            first = next(response.iter_lines())
            assert first.startswith("data: ")
            assert engine.metric("vllm:num_requests_running") == 1
        wait_for(lambda: engine.metric("vllm:num_requests_running") == 0, message="running 0")
    finally:
        engine.client.close()
        engine.proc.stop()


def test_it_crashes_on_demand(tmp_path: Path) -> None:
    engine = start_mock_engine(tmp_path)
    try:
        with pytest.raises(httpx.HTTPError):
            engine.client.post("/mock/control", json={"crash": True})
        wait_for(lambda: not engine.proc.alive(), message="mock engine to exit")
        assert engine.proc.proc.returncode == 1
    finally:
        engine.client.close()
        engine.proc.stop()


def test_it_reports_unhealthy_during_startup_and_on_demand(tmp_path: Path) -> None:
    started = time.monotonic()
    engine = start_mock_engine(tmp_path, "--startup-delay-s", "1.5")
    try:
        if time.monotonic() - started < 1.2:
            assert httpx.get(engine.url + "/health").status_code == 503
        wait_for(lambda: httpx.get(engine.url + "/health").status_code == 200, message="healthy")
        engine.client.post("/mock/control", json={"unhealthy": True})
        assert httpx.get(engine.url + "/health").status_code == 503
        engine.client.post("/mock/control", json={"unhealthy": False})
        assert httpx.get(engine.url + "/health").status_code == 200
    finally:
        engine.client.close()
        engine.proc.stop()

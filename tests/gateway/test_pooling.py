"""Rerank, score, tokenize and detokenize through real gateway and mock-engine processes: the
paths vLLM and Cohere/Jina-style clients use, refusals, and one exact usage record each
(issue 17)."""

from __future__ import annotations

import httpx
import pytest

from apps.gateway.errors import GatewayError
from apps.gateway.pooling import prepare
from tests.gateway.conftest import flushed_usage

DOCS = ["the cat sat on the mat", "stock markets fell today", "a cat and a dog"]


@pytest.fixture
def gateway(model_code, start_engine, start_gateway, new_key):
    start_engine(model_code)
    gw = start_gateway()
    key = new_key()[1]
    return gw, {"Authorization": f"Bearer {key}"}


def test_rerank_on_every_path_with_exact_usage(gateway):
    gw, auth = gateway
    body = {"model": "sales-bot", "query": "cat", "documents": DOCS, "top_n": 2}

    answers = [
        httpx.post(f"{gw.url}{path}", json=body, headers=auth).json()
        for path in ("/v1/rerank", "/rerank", "/v2/rerank")
    ]
    # The official SDK's generic call reaches it too
    sdk = gw.client(auth["Authorization"][7:]).post("/rerank", body=body, cast_to=object)

    first = answers[0]
    assert [r["index"] for r in first["results"]] in ([0, 2], [2, 0])
    assert first["results"][0]["relevance_score"] >= first["results"][1]["relevance_score"]
    assert first["results"][0]["document"]["text"] in DOCS
    assert (
        all(a["results"] == first["results"] for a in answers)
        and sdk["results"] == first["results"]
    )
    tokens = sum(1 + len(d.split()) for d in DOCS)
    assert first["usage"] == {"total_tokens": tokens}
    records = flushed_usage(4)
    assert [(r.endpoint, r.prompt_tokens, r.completion_tokens) for r in records] == [
        ("rerank", tokens, 0)
    ] * 4


def test_score_one_against_many_and_pairwise(gateway):
    gw, auth = gateway
    one = httpx.post(
        f"{gw.url}/v1/score",
        json={"model": "sales-bot", "text_1": "cat", "text_2": DOCS},
        headers=auth,
    ).json()
    pairs = httpx.post(
        f"{gw.url}/score",
        json={"model": "sales-bot", "text_1": ["cat", "dog"], "text_2": ["a cat", "a cat"]},
        headers=auth,
    ).json()

    assert [d["index"] for d in one["data"]] == [0, 1, 2]
    assert one["data"][0]["score"] > one["data"][1]["score"]
    assert pairs["data"][0]["score"] > pairs["data"][1]["score"]
    records = flushed_usage(2)
    assert [(r.endpoint, r.prompt_tokens) for r in records] == [
        ("score", one["usage"]["prompt_tokens"]),
        ("score", 6),
    ]


def test_tokenize_and_detokenize_round_trip(gateway):
    gw, auth = gateway
    reply = gw.client(auth["Authorization"][7:]).completions.create(
        model="sales-bot", prompt="x", max_tokens=3
    )
    text = reply.choices[0].text

    tokens = httpx.post(
        f"{gw.url}/tokenize", json={"model": "sales-bot", "prompt": text}, headers=auth
    ).json()
    back = httpx.post(
        f"{gw.url}/v1/detokenize",
        json={"model": "sales-bot", "tokens": tokens["tokens"]},
        headers=auth,
    ).json()

    assert tokens["count"] == 3 and tokens["max_model_len"] == 4096
    assert back["prompt"] == text
    records = flushed_usage(3)
    assert [(r.endpoint, r.prompt_tokens, r.completion_tokens) for r in records[1:]] == [
        ("tokenize", 0, 0),
        ("detokenize", 0, 0),
    ]


def test_refusals_in_the_envelope(gateway):
    gw, auth = gateway
    missing = httpx.post(
        f"{gw.url}/v1/rerank", json={"model": "sales-bot", "query": "q"}, headers=auth
    )
    engine_400 = httpx.post(
        f"{gw.url}/v1/score",
        json={"model": "sales-bot", "text_1": ["a", "b"], "text_2": ["a", "b", "c"]},
        headers=auth,
    )
    anonymous = httpx.post(f"{gw.url}/v1/rerank", json={"model": "sales-bot"})

    assert missing.status_code == 400 and missing.json()["error"]["param"] == "documents"
    assert engine_400.status_code == 400 and engine_400.json()["error"]["param"] == "text_2"
    assert anonymous.status_code == 401


def test_engines_without_them_are_refused():
    # A chat-only engine (e.g. TGI): the per-engine capability flag refuses before any call
    with pytest.raises(GatewayError) as caught:
        prepare({"model": "m", "query": "q", "documents": ["d"]}, "rerank", "tgi")
    assert caught.value.code == "endpoint_not_supported" and caught.value.status == 400
    assert prepare({"model": "m", "query": "q", "documents": ["d"]}, "rerank", "vllm") == (
        "/v1/rerank"
    )

"""The mock engine refuses what its context cannot hold, as vLLM does (issue 15)."""

from __future__ import annotations

import time
from collections.abc import Iterator

import pytest

from tests.agent.conftest import MockEngine, start_mock_engine

CHAT = {"model": "tiny", "messages": [{"role": "user", "content": "hello mock world"}]}  # 4


@pytest.fixture(scope="module")
def engine(tmp_path_factory: pytest.TempPathFactory) -> Iterator[MockEngine]:
    e = start_mock_engine(tmp_path_factory.mktemp("mock"), "--max-model-len", "32")
    yield e
    e.client.close()
    e.proc.stop()


def test_it_refuses_prompt_plus_max_tokens_over_its_context(engine: MockEngine) -> None:
    # When a request asks for 10^12 tokens, or one more than the context holds
    start = time.monotonic()
    huge = engine.client.post("/v1/chat/completions", json={**CHAT, "max_tokens": 10**12})
    one_over = engine.client.post(
        "/v1/chat/completions", json={**CHAT, "max_completion_tokens": 29, "stream": True}
    )
    fits = engine.client.post("/v1/chat/completions", json={**CHAT, "max_tokens": 28})

    # Then both are refused at once with 400 (the message says why), and the limit fits
    assert time.monotonic() - start < 5
    assert huge.status_code == one_over.status_code == 400
    error = huge.json()["error"]
    assert error["param"] == "max_tokens" and "maximum context length is 32" in error["message"]
    assert one_over.json()["error"]["param"] == "max_completion_tokens"
    assert fits.status_code == 200 and fits.json()["usage"]["total_tokens"] == 32


def test_it_advertises_its_context_length(engine: MockEngine) -> None:
    assert engine.client.get("/v1/models").json()["data"][0]["max_model_len"] == 32

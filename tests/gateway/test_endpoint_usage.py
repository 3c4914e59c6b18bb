"""Usage exactness for every endpoint through two gateway processes (issue 17): what the
records bill equals what the engine counted (its vLLM-named counters), streams and a client
that leaves mid-stream included."""

from __future__ import annotations

import httpx

from tests.gateway.conftest import flushed_usage

HELLO = [{"role": "user", "content": "hello there"}]


def test_every_endpoint_bills_what_the_engine_generated(
    model_code, start_engine, start_gateway, new_key
):
    # Given one engine behind two gateways: one passes /v1/responses through, one translates
    engine = start_engine(model_code, token_rate=200.0)
    native = start_gateway()
    translating = start_gateway(GATEWAY_RESPONSES_ENGINES="vllm")
    key = new_key()[1]
    auth = {"Authorization": f"Bearer {key}"}
    before = engine.generated()

    # When every endpoint is used through both gateways
    for gateway in (native, translating):
        client = gateway.client(key)
        client.chat.completions.create(model="sales-bot", messages=HELLO, max_tokens=4, n=2)
        list(
            client.chat.completions.create(
                model="sales-bot", messages=HELLO, max_tokens=3, n=2, stream=True
            )
        )
        client.completions.create(model="sales-bot", prompt="a b c", max_tokens=5, logprobs=1)
        client.embeddings.create(model="sales-bot", input=["a b", "c"])
        client.responses.create(model="sales-bot", input="hi there", max_output_tokens=6)
        with client.responses.stream(
            model="sales-bot", input="hi there", max_output_tokens=7
        ) as stream:
            stream.get_final_response()
        for path, body in (
            ("/v1/rerank", {"query": "cat", "documents": ["a cat", "a dog"]}),
            ("/v1/score", {"text_1": "cat", "text_2": ["a cat", "a dog"]}),
        ):
            answer = httpx.post(
                f"{gateway.url}{path}", json={"model": "sales-bot", **body}, headers=auth
            )
            assert answer.status_code == 200
    # And a client leaves a translated Responses stream after its first event
    with httpx.stream(
        "POST",
        f"{translating.url}/v1/responses",
        json={"model": "sales-bot", "input": "long one", "max_output_tokens": 40, "stream": True},
        headers=auth,
    ) as leaving:
        next(leaving.iter_raw())

    # Then each request has one record, and the records bill exactly what the engine counted
    records = flushed_usage(17, timeout=20)
    assert len(records) == 17
    prompt_counted, generated = (a - b for a, b in zip(engine.generated(), before, strict=True))
    embeddings = [r for r in records if r.endpoint == "embeddings"]
    # (the engine's counters include embeddings' prompt tokens too)
    assert sum(r.prompt_tokens for r in records) == prompt_counted
    assert sum(r.completion_tokens for r in records) == generated
    assert all(r.prompt_tokens == 3 for r in embeddings)
    by_endpoint = sorted({r.endpoint for r in records})
    assert by_endpoint == ["chat", "completions", "embeddings", "rerank", "responses", "score"]
    left = [r for r in records if r.status_code == 499]
    assert len(left) == 1 and left[0].endpoint == "responses" and left[0].completion_tokens == 40

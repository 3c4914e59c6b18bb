"""LangChain's ``ChatOpenAI`` (chat completions and the Responses API) and ``OpenAIEmbeddings``
against real gateway and mock-engine processes (issue 17): plain, streamed, tool calls,
structured output. No network: embeddings skip tiktoken's length check (it downloads)."""

from __future__ import annotations

import pytest
from langchain_openai import ChatOpenAI, OpenAIEmbeddings
from pydantic import BaseModel

from tests.gateway.conftest import flushed_usage


class Person(BaseModel):
    name: str
    age: int


def get_weather(city: str) -> str:
    """The weather in a city."""
    return "sunny"


@pytest.fixture
def llm_for(model_code, start_engine, start_gateway, new_key):
    start_engine(model_code)
    gateway = start_gateway()
    key = new_key()[1]

    def make(**kwargs):
        return ChatOpenAI(
            base_url=f"{gateway.url}/v1", api_key=key, model="sales-bot", max_retries=0, **kwargs
        )

    make.embeddings = OpenAIEmbeddings(  # type: ignore[attr-defined]
        base_url=f"{gateway.url}/v1",
        api_key=key,
        model="sales-bot",
        check_embedding_ctx_length=False,
        max_retries=0,
    )
    return make


@pytest.mark.parametrize("responses_api", [False, True], ids=["chat", "responses"])
def test_chat_openai_plain_streamed_tools_and_structured(llm_for, responses_api):
    llm = llm_for(max_tokens=5, use_responses_api=responses_api)

    reply = llm.invoke("hello there")
    streamed = "".join(chunk.text for chunk in llm.stream("hello there"))
    call = llm.bind_tools([get_weather]).invoke("weather in Paris?")
    person = (
        llm_for(max_tokens=16, use_responses_api=responses_api)
        .with_structured_output(Person, method="json_schema")
        .invoke("who?")
    )

    assert reply.text and streamed == reply.text
    assert reply.usage_metadata["output_tokens"] == 5
    assert call.tool_calls and call.tool_calls[0]["name"] == "get_weather"
    assert isinstance(call.tool_calls[0]["args"]["city"], str)
    assert isinstance(person, Person)
    endpoint = "responses" if responses_api else "chat"
    records = flushed_usage(4)
    assert {r.endpoint for r in records} == {endpoint}
    assert [r.completion_tokens for r in records[:2]] == [5, 5]


def test_openai_embeddings(llm_for):
    vectors = llm_for.embeddings.embed_documents(["a b", "c"])
    query = llm_for.embeddings.embed_query("a b")
    assert len(vectors) == 2 and len(vectors[0]) == 8 and query == vectors[0]

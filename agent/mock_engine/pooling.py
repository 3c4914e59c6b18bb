"""The mock engine's cross-encoder and tokenizer endpoints, as vLLM answers them (pure).

* ``/v1/rerank`` (also ``/rerank``, ``/v2/rerank``): ``query`` and ``documents`` (strings or
  ``{"text"}``), ``top_n``, ``return_documents``; results by ``relevance_score``, highest first;
  ``usage.total_tokens`` the pairs' tokens.
* ``/v1/score`` (also ``/score``): ``text_1`` and ``text_2`` (a string or strings: one against
  many, or pairwise); ``data`` of ``score`` objects; usage ``prompt_tokens``.
* ``/tokenize`` (``prompt`` or ``messages``) and ``/detokenize`` (``tokens``): a word is a token;
  the mock's own words ``tokN`` are token ``N``, so its completions round-trip.

Scores are deterministic and favour documents sharing the query's words.
"""

from __future__ import annotations

import re
import time
from typing import Any

import orjson

from agent.mock_engine.asgi import HttpError
from agent.mock_engine.tokens import WORDS, chat_prompt, seed_of

_TOK = re.compile(r"tok(\d{1,3})")


def count(text: str) -> int:
    return max(1, len(text.split()))


def relevance(query: str, document: str) -> float:
    q = set(query.lower().split())
    d = set(document.lower().split())
    overlap = len(q & d) / max(1, len(q))
    jitter = (seed_of(f"{query}\x00{document}") % 1000) / 1000
    return round(0.8 * overlap + 0.2 * jitter, 6)


def _texts(value: Any, param: str) -> list[str]:
    if isinstance(value, str):
        return [value]
    if isinstance(value, list) and value:
        out = []
        for item in value:
            if isinstance(item, dict) and isinstance(item.get("text"), str):
                out.append(item["text"])
            elif isinstance(item, str):
                out.append(item)
            else:
                raise HttpError(400, f"{param} must hold strings", "invalid_value", param)
        return out
    raise HttpError(400, f"{param} must be a string or a non-empty list", "invalid_value", param)


def rerank_body(req: dict[str, Any], *, id_: str, model: str) -> bytes:
    query = req.get("query")
    if not isinstance(query, str):
        raise HttpError(400, "query must be a string", "invalid_value", "query")
    documents = _texts(req.get("documents"), "documents")
    top_n = req.get("top_n")
    if top_n is not None and (isinstance(top_n, bool) or not isinstance(top_n, int) or top_n < 0):
        raise HttpError(400, "top_n must be a non-negative integer", "invalid_value", "top_n")
    scores = [relevance(query, doc) for doc in documents]
    order = sorted(range(len(documents)), key=lambda i: (-scores[i], i))
    results: list[dict[str, Any]] = [
        {"index": i, "document": {"text": documents[i]}, "relevance_score": scores[i]}
        for i in order
    ]
    if top_n:
        results = results[:top_n]
    if req.get("return_documents") is False:
        for r in results:
            r["document"] = None
    tokens = sum(count(query) + count(doc) for doc in documents)
    return orjson.dumps(
        {"id": id_, "model": model, "usage": {"total_tokens": tokens}, "results": results}
    )


def score_body(req: dict[str, Any], *, id_: str, model: str) -> bytes:
    first = _texts(req.get("text_1"), "text_1")
    second = _texts(req.get("text_2"), "text_2")
    if len(first) == 1:
        first = first * len(second)
    if len(first) != len(second):
        raise HttpError(
            400, "text_1 and text_2 must have the same length", "invalid_value", "text_2"
        )
    data = [
        {"index": i, "object": "score", "score": relevance(a, b)}
        for i, (a, b) in enumerate(zip(first, second, strict=True))
    ]
    tokens = sum(count(a) + count(b) for a, b in zip(first, second, strict=True))
    return orjson.dumps(
        {
            "id": id_,
            "object": "list",
            "created": int(time.time()),
            "model": model,
            "data": data,
            "usage": {
                "prompt_tokens": tokens,
                "total_tokens": tokens,
                "completion_tokens": 0,
                "prompt_tokens_details": None,
            },
        }
    )


def token_id(word: str) -> int:
    match = _TOK.fullmatch(word)
    return int(match.group(1)) if match else len(WORDS) + seed_of(word) % 100_000


def tokenize_body(req: dict[str, Any], *, max_model_len: int) -> bytes:
    if isinstance(req.get("messages"), list):
        text, _ = chat_prompt(req["messages"])
    elif isinstance(req.get("prompt"), str):
        text = req["prompt"]
    else:
        raise HttpError(400, "prompt (a string) or messages is required", "invalid_value", "prompt")
    tokens = [token_id(w) for w in text.split()]
    return orjson.dumps(
        {"count": len(tokens), "max_model_len": max_model_len, "tokens": tokens, "token_strs": None}
    )


def detokenize_body(req: dict[str, Any]) -> bytes:
    tokens = req.get("tokens")
    if not isinstance(tokens, list) or not all(
        isinstance(t, int) and not isinstance(t, bool) and t >= 0 for t in tokens
    ):
        raise HttpError(400, "tokens must be a list of token ids", "invalid_value", "tokens")
    words = [WORDS[t] if t < len(WORDS) else f"<{t}> " for t in tokens]
    return orjson.dumps({"prompt": "".join(words)})

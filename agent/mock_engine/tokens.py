"""Deterministic token accounting and text for the mock engine.

Everything here is a pure function of the request: the same prompt always yields the same
prompt-token count, the same completion words and the same embedding vector, across processes
(``zlib.crc32``, never ``hash()``, which is salted per process).
"""

from __future__ import annotations

import math
import zlib
from typing import Any

_VOCAB = 1000
WORDS: tuple[str, ...] = tuple(f"tok{i} " for i in range(_VOCAB))


def _content_text(content: Any) -> str:
    if isinstance(content, str):
        return content
    if isinstance(content, list):  # OpenAI content parts: keep the text ones
        return " ".join(
            part["text"]
            for part in content
            if isinstance(part, dict) and isinstance(part.get("text"), str)
        )
    return ""


def chat_prompt(messages: list[Any]) -> tuple[str, int]:
    """Return ``(prompt_text, prompt_tokens)``: whitespace-split words plus one per message."""
    texts = [_content_text(m.get("content")) if isinstance(m, dict) else "" for m in messages]
    tokens = sum(len(t.split()) + 1 for t in texts)
    return "\n".join(texts), tokens


def completion_prompt(prompt: Any) -> tuple[str, int]:
    """Return ``(prompt_text, prompt_tokens)`` for ``/v1/completions``; at least one token.

    A list of strings is treated as one joined prompt; a list of token ids counts its ids.
    """
    if isinstance(prompt, str):
        return prompt, max(1, len(prompt.split()))
    if isinstance(prompt, list) and prompt:
        if all(isinstance(p, int) for p in prompt):
            return " ".join(map(str, prompt)), len(prompt)
        if all(isinstance(p, str) for p in prompt):
            text = " ".join(prompt)
            return text, max(1, len(text.split()))
    return "", 1


def seed_of(text: str) -> int:
    return zlib.crc32(text.encode("utf-8", "surrogatepass"))


def token_words(seed: int, count: int) -> list[str]:
    """``count`` words like ``"tok17 "``, derived from ``seed``."""
    return [WORDS[(seed + 31 * i) % _VOCAB] for i in range(count)]


def embedding(text: str, dim: int) -> list[float]:
    """A unit-length vector of ``dim`` floats derived from ``text``."""
    seed = seed_of(text) | 1
    raw = [((seed * (j + 1) * 2654435761) % 4294967296) / 4294967296.0 - 0.5 for j in range(dim)]
    norm = math.sqrt(sum(v * v for v in raw)) or 1.0
    return [v / norm for v in raw]

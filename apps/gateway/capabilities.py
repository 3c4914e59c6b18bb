"""Which endpoints each engine serves natively (a per-engine capability table).

vLLM (and the mock engine, which speaks its API) serve every endpoint the gateway knows
(``/v1/responses`` as ``GATEWAY_RESPONSES_ENGINES`` says). TGI serves chat and completions
only; any other engine (a plain OpenAI-compatible server) is taken to serve chat, completions
and embeddings. The gateway translates ``/v1/responses`` onto chat completions for engines
without it (``apps.gateway.responses``) and refuses the others with 400
``endpoint_not_supported``.
"""

from __future__ import annotations

from django.conf import settings

BASIC = frozenset({"chat", "completions", "embeddings"})
ALL = BASIC | {"responses", "rerank", "score", "tokenize", "detokenize"}
# TGI serves chat and completions (its OpenAI-compatible API); embeddings are TEI's, not TGI's.
NATIVE: dict[str, frozenset[str]] = {
    "vllm": ALL,
    "mock": ALL,
    "tgi": frozenset({"chat", "completions"}),
}
# Served by translation when the engine lacks them.
TRANSLATED = frozenset({"responses"})


def serves(engine: str, endpoint: str) -> bool:
    """Whether ``engine`` answers ``endpoint`` itself (``/v1/responses``: when it is listed in
    ``GATEWAY_RESPONSES_ENGINES``, e.g. not for a vLLM older than 0.10)."""
    if endpoint == "responses":
        return engine in settings.GATEWAY_RESPONSES_ENGINES
    return endpoint in NATIVE.get(engine, BASIC)

"""Plain snapshots the gateway keeps in memory (never ORM objects on the hot path)."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True, slots=True)
class KeySnapshot:
    id: int
    lookup_id: str
    secret_hash: str
    organization_id: int
    # Primary keys of the model codes it may use; None: every model code of the organization.
    allowed_model_code_ids: frozenset[int] | None
    expires_at: float | None  # epoch seconds
    revoked: bool
    rpm: int
    tpm: int
    concurrency: int


@dataclass(frozen=True, slots=True)
class InstanceSnapshot:
    id: str
    endpoint: str  # http://host:port, or https://host:port behind the agent's TLS front
    secret: str
    # Its machine cannot be dialed: reached through its agent's tunnel (apps.gateway.tunnel).
    tunnel: bool = False
    # SHA-256 (hex) of the agent's TLS front certificate: an https endpoint is pinned to it.
    tls_fingerprint: str = ""


@dataclass(frozen=True, slots=True)
class ModelSnapshot:
    id: int
    organization_id: int
    organization_slug: str
    name: str
    routing_policy: str
    created: int  # epoch seconds
    instances: tuple[InstanceSnapshot, ...]
    # Context length in tokens (the engine's ``max_model_len``, else the model code's); None:
    # not declared (the gateway then applies ``GATEWAY_DEFAULT_MAX_MODEL_LEN``).
    max_model_len: int | None = None
    # The model code's engine (``apps.models.choices.Engine``): which endpoints it serves
    # natively (``apps.gateway.capabilities``).
    engine: str = "vllm"
    # How long a request is held while the model code wakes from zero (its scaling policy).
    hold_timeout_s: float = 600.0
    # Its policy scales to zero (min 0, max > 0): a request with no ready instance is held.
    holds_at_zero: bool = False

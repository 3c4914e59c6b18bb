"""The API key format, in one place: ``sk-inv_<lookup id: 16 hex>_<secret: 43 url-safe>``."""

from __future__ import annotations

import secrets

PREFIX = "sk-inv_"
LOOKUP_LEN = 16


def new_key() -> tuple[str, str]:
    """Return ``(lookup_id, plaintext key)``."""
    lookup_id = secrets.token_hex(LOOKUP_LEN // 2)
    return lookup_id, f"{PREFIX}{lookup_id}_{secrets.token_urlsafe(32)}"


def parse_lookup_id(key: str) -> str | None:
    """The lookup id of a well-formed key, else None (no secret is inspected here)."""
    if not key.startswith(PREFIX) or len(key) < len(PREFIX) + LOOKUP_LEN + 20:
        return None
    lookup_id = key[len(PREFIX) : len(PREFIX) + LOOKUP_LEN]
    if key[len(PREFIX) + LOOKUP_LEN] != "_":
        return None
    return lookup_id

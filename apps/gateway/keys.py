"""The API key format, in one place: ``sk-inv_<lookup id: 16 hex>_<secret: 43 url-safe>``."""

from __future__ import annotations

from inventiv import crypto

PREFIX = "sk-inv_"
LOOKUP_LEN = crypto.LOOKUP_LEN


def new_key() -> tuple[str, str]:
    """Return ``(lookup_id, plaintext key)``."""
    return crypto.new_lookup_key(PREFIX)


def parse_lookup_id(key: str) -> str | None:
    """The lookup id of a well-formed key, else None (no secret is inspected here)."""
    return crypto.parse_lookup_id(PREFIX, key)

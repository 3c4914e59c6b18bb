"""Encryption at rest for secrets we must be able to read back (engine secrets, provider
credentials). Keys come from ``INVENTIV_ENCRYPTION_KEYS`` (comma-separated Fernet keys, newest
first, for rotation); without it, one key is derived from ``SECRET_KEY``."""

from __future__ import annotations

import base64
import hashlib
import hmac
import secrets
from functools import lru_cache

from cryptography.fernet import Fernet, InvalidToken, MultiFernet
from django.conf import settings

from inventiv.env import env_list


@lru_cache(maxsize=1)
def _fernet() -> MultiFernet:
    keys = env_list("INVENTIV_ENCRYPTION_KEYS")
    if not keys:
        derived = hashlib.sha256(b"inventiv-encryption:" + settings.SECRET_KEY.encode()).digest()
        keys = [base64.urlsafe_b64encode(derived).decode()]
    return MultiFernet([Fernet(key.encode()) for key in keys])


def encrypt(plaintext: str) -> str:
    return _fernet().encrypt(plaintext.encode()).decode()


def decrypt(ciphertext: str) -> str:
    try:
        return _fernet().decrypt(ciphertext.encode()).decode()
    except InvalidToken:
        raise ValueError("cannot decrypt: wrong or rotated-out encryption key") from None


def new_token(prefix: str = "", nbytes: int = 32) -> str:
    return prefix + secrets.token_urlsafe(nbytes)


def token_hash(token: str) -> str:
    """Keyed hash of a high-entropy token, for lookup without storing the token."""
    key = hashlib.sha256(b"inventiv-token:" + settings.SECRET_KEY.encode()).digest()
    return hmac.new(key, token.encode(), hashlib.sha256).hexdigest()


def token_matches(token: str, stored_hash: str) -> bool:
    return hmac.compare_digest(token_hash(token), stored_hash)


LOOKUP_LEN = 16


def new_lookup_key(prefix: str) -> tuple[str, str]:
    """A credential with a public lookup id: ``<prefix><16 hex>_<43 url-safe>``.
    Returns ``(lookup_id, plaintext)``; store only the lookup id and ``token_hash(plaintext)``."""
    lookup_id = secrets.token_hex(LOOKUP_LEN // 2)
    return lookup_id, f"{prefix}{lookup_id}_{secrets.token_urlsafe(32)}"


def parse_lookup_id(prefix: str, key: str) -> str | None:
    """The lookup id of a well-formed ``new_lookup_key(prefix)`` credential, else None (no
    secret is inspected here)."""
    if not key.startswith(prefix) or len(key) < len(prefix) + LOOKUP_LEN + 20:
        return None
    if key[len(prefix) + LOOKUP_LEN] != "_":
        return None
    return key[len(prefix) : len(prefix) + LOOKUP_LEN]

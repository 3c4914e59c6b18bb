"""The API key cache: lookup id → key snapshot, filled from the database on a miss.

A request with a cached key touches no database: the key's hash is recomputed from the
presented key and compared in constant time. Revocations arrive as events (the entry is dropped
and reloaded on next use); a periodic refresh re-reads every cached key as a safety net, and an
expired key is refused from its cached expiry time.
"""

from __future__ import annotations

import asyncio
import hashlib
import hmac
import logging
import time
from concurrent.futures import ThreadPoolExecutor

from django.conf import settings

from apps.gateway import selectors
from apps.gateway.db import db_call
from apps.gateway.keys import parse_lookup_id
from apps.gateway.types import KeySnapshot

logger = logging.getLogger("apps.gateway")

# Unknown lookup ids are remembered briefly, so that garbage keys cannot hammer the database.
_NEGATIVE_TTL_S = 1.0
_NEGATIVE_MAX = 10_000


_derived: tuple[str, bytes] = ("", b"")  # (SECRET_KEY, the token hash's key derived from it)


def presented_hash(token: str) -> str:
    """``inventiv.crypto.token_hash(token)``, on the hot path: the HMAC key derived once per
    ``SECRET_KEY`` (not per request) and the one-call C HMAC (``hmac.digest``) instead of an
    ``hmac.new`` object."""
    global _derived
    secret = settings.SECRET_KEY
    if _derived[0] != secret:
        # inventiv.crypto.token_hash's key (tests/gateway/test_api_keys.py checks they agree).
        _derived = (secret, hashlib.sha256(b"inventiv-token:" + secret.encode()).digest())
    return hmac.digest(_derived[1], token.encode(), "sha256").hex()


class KeyCache:
    def __init__(self, executor: ThreadPoolExecutor) -> None:
        self._executor = executor
        self._keys: dict[str, KeySnapshot] = {}
        self._unknown: dict[str, float] = {}
        self._loading: dict[str, asyncio.Future[KeySnapshot | None]] = {}
        self.refresh_s = settings.GATEWAY_KEY_REFRESH_S

    async def authenticate(self, presented: str) -> KeySnapshot | None:
        """The key's snapshot if ``presented`` is a valid, live key; else None."""
        lookup_id = parse_lookup_id(presented)
        if lookup_id is None:
            return None
        key = self._keys.get(lookup_id)
        if key is None:
            key = await self._load(lookup_id)
            if key is None:
                return None
        if key.revoked or (key.expires_at is not None and key.expires_at <= time.time()):
            return None
        if not hmac.compare_digest(presented_hash(presented), key.secret_hash):
            return None
        return key

    async def _load(self, lookup_id: str) -> KeySnapshot | None:
        until = self._unknown.get(lookup_id)
        if until is not None and until > time.monotonic():
            return None
        pending = self._loading.get(lookup_id)
        if pending is not None:  # one query for concurrent first uses of a key
            return await asyncio.shield(pending)
        future: asyncio.Future[KeySnapshot | None] = asyncio.get_running_loop().create_future()
        self._loading[lookup_id] = future
        try:
            found = await db_call(self._executor, selectors.key_snapshots, lookup_ids=[lookup_id])
            key = found.get(lookup_id)
            if key is None:
                if len(self._unknown) >= _NEGATIVE_MAX:
                    self._unknown.clear()
                self._unknown[lookup_id] = time.monotonic() + _NEGATIVE_TTL_S
            else:
                self._keys[lookup_id] = key
            future.set_result(key)
            return key
        except BaseException as exc:
            future.set_exception(exc)
            future.exception()  # retrieved: no "never retrieved" warning without waiters
            raise
        finally:
            del self._loading[lookup_id]

    def invalidate(self, lookup_id: str) -> None:
        self._keys.pop(lookup_id, None)
        self._unknown.pop(lookup_id, None)

    def invalidate_all(self) -> None:
        self._keys.clear()
        self._unknown.clear()

    async def refresh(self) -> None:
        lookup_ids = list(self._keys)
        if not lookup_ids:
            return
        found = await db_call(self._executor, selectors.key_snapshots, lookup_ids=lookup_ids)
        for lookup_id in lookup_ids:
            key = found.get(lookup_id)
            if key is None:
                self._keys.pop(lookup_id, None)
            else:
                self._keys[lookup_id] = key

    async def run(self) -> None:
        while True:
            await asyncio.sleep(self.refresh_s)
            try:
                await self.refresh()
            except Exception:
                logger.exception("API key refresh failed")

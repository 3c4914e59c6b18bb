"""Provider credentials: encrypted at rest (``inventiv.crypto``), decrypted only in worker
processes at the moment an adapter needs them, never logged, never sent to machines."""

from __future__ import annotations

import json

from apps.accounts.services import audit_record
from apps.instances.models import Provider
from inventiv import crypto
from inventiv.errors import ApplicationError

# What each kind expects (documented in docs/providers.md).
REQUIRED_KEYS: dict[str, tuple[str, ...]] = {
    "scaleway": ("access_key", "secret_key"),
    "aws": (),  # empty: the worker's own role / environment (instance profile, IRSA...)
    "onprem": (),
    "local": (),
}


class Credentials(dict[str, str]):
    """A dict whose repr never shows the values (it may end up in a traceback or a log)."""

    def __repr__(self) -> str:
        return f"Credentials(keys={sorted(self)})"

    __str__ = __repr__


def credentials_for(provider: Provider) -> Credentials:
    """The provider's decrypted credentials (empty when none are stored)."""
    if not provider.credentials_encrypted:
        return Credentials()
    data = json.loads(crypto.decrypt(provider.credentials_encrypted))
    return Credentials({str(k): str(v) for k, v in data.items()})


def provider_set_credentials(*, provider: Provider, credentials: dict[str, str]) -> None:
    """Validate and store ``credentials`` encrypted. Empty values are dropped. Raises
    ``ApplicationError`` naming the missing key (never echoing a value)."""
    cleaned = {k: v.strip() for k, v in credentials.items() if v and v.strip()}
    for key in REQUIRED_KEYS.get(provider.kind, ()):
        if key not in cleaned:
            raise ApplicationError(f"The credential {key!r} is required.", param=key)
    provider.credentials_encrypted = crypto.encrypt(json.dumps(cleaned)) if cleaned else ""
    provider.save(update_fields=["credentials_encrypted"])
    # The keys that were set, never a value.
    audit_record(action="provider.credentials", target=provider, data={"keys": sorted(cleaned)})

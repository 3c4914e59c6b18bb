"""Writes for API keys: create, revoke, rotate. Revocations are published to every gateway
process after commit (group ``keys``); gateways also re-check cached keys periodically."""

from __future__ import annotations

from collections.abc import Sequence
from datetime import datetime

from django.db import transaction
from django.utils import timezone

from apps.accounts.models import Organization, User
from apps.accounts.services import audit_record
from apps.gateway.keys import new_key, parse_lookup_id
from apps.gateway.models import ApiKey
from apps.models.choices import ModelStatus
from apps.models.models import LlmModel
from inventiv.crypto import token_hash, token_matches
from inventiv.errors import ApplicationError
from inventiv.events import KEY_CHANGED, KEY_REVOKED, KEYS_GROUP, KeyRevokedEvent, publish_on_commit


def _check_model_codes(organization: Organization, model_codes: Sequence[LlmModel]) -> None:
    for model in model_codes:
        if model.organization_id != organization.id or model.status == ModelStatus.DECOMMISSIONED:
            raise ApplicationError(
                f"No model code {model.pk} in this organization.",
                param="model_codes",
            )


@transaction.atomic
def api_key_create(
    *,
    organization: Organization,
    name: str,
    created_by: User | None = None,
    model_codes: Sequence[LlmModel] = (),
    expires_at: datetime | None = None,
    rpm_limit: int | None = None,
    tpm_limit: int | None = None,
    concurrency_limit: int | None = None,
    rotated_from: ApiKey | None = None,
) -> tuple[ApiKey, str]:
    """Create a key; return it with its plaintext, which is never stored nor shown again."""
    _check_model_codes(organization, model_codes)
    if expires_at is not None and expires_at <= timezone.now():
        raise ApplicationError("expires_at must be in the future.", param="expires_at")
    lookup_id, plaintext = new_key()
    key = ApiKey.objects.create(
        organization=organization,
        name=name,
        lookup_id=lookup_id,
        secret_hash=token_hash(plaintext),
        expires_at=expires_at,
        rpm_limit=rpm_limit,
        tpm_limit=tpm_limit,
        concurrency_limit=concurrency_limit,
        created_by=created_by,
        rotated_from=rotated_from,
    )
    if model_codes:
        key.model_codes.set(model_codes)
    audit_record(
        action="api_key.rotate" if rotated_from else "api_key.create",
        organization=organization,
        target=key,
        actor=created_by,
        data={"model_codes": [m.pk for m in model_codes], "prefix": lookup_id},
    )
    return key, plaintext


def api_key_revoke(*, key: ApiKey) -> ApiKey:
    """Revoke a key (idempotent: revoking a revoked key changes nothing). Every gateway refuses
    it within a second of the commit."""
    now = timezone.now()
    changed = ApiKey.objects.filter(pk=key.pk, revoked_at__isnull=True).update(revoked_at=now)
    key.refresh_from_db(fields=["revoked_at"])
    if changed:
        audit_record(action="api_key.revoke", organization_id=key.organization_id, target=key)
        publish_on_commit(
            [KEYS_GROUP],
            KEY_REVOKED,
            KeyRevokedEvent(
                key_id=key.pk,
                lookup_id=key.lookup_id,
                organization_id=key.organization_id,
                at=now.isoformat(),
            ),
        )
    return key


LIMIT_FIELDS = ("rpm_limit", "tpm_limit", "concurrency_limit")


def api_key_set_limits(
    *,
    key: ApiKey,
    rpm_limit: int | None,
    tpm_limit: int | None,
    concurrency_limit: int | None,
) -> ApiKey:
    """Change a key's rate limits (None: no limit). Every gateway re-reads the key within a
    second of the commit (``EVENT:KEY_CHANGED``). Raises ApplicationError naming a bad limit."""
    limits = {
        "rpm_limit": rpm_limit,
        "tpm_limit": tpm_limit,
        "concurrency_limit": concurrency_limit,
    }
    for name, value in limits.items():
        if value is not None and not 1 <= value <= 2**31 - 1:
            raise ApplicationError(f"{name}: must be between 1 and {2**31 - 1}.", param=name)
    if all(getattr(key, name) == value for name, value in limits.items()):
        return key
    with transaction.atomic():
        ApiKey.objects.filter(pk=key.pk).update(**limits)
        for name, value in limits.items():
            setattr(key, name, value)
        audit_record(
            action="api_key.limits", organization_id=key.organization_id, target=key, data=limits
        )
        publish_on_commit(
            [KEYS_GROUP],
            KEY_CHANGED,
            KeyRevokedEvent(
                key_id=key.pk,
                lookup_id=key.lookup_id,
                organization_id=key.organization_id,
                at=timezone.now().isoformat(),
            ),
        )
    return key


@transaction.atomic
def api_key_rotate(*, key: ApiKey, created_by: User | None = None) -> tuple[ApiKey, str]:
    """Replace a key by a new one with the same name, scope, limits and expiry; the old key is
    revoked at once."""
    if key.revoked_at is not None:
        raise ApplicationError("This key is revoked.", code="key_revoked")
    new, plaintext = api_key_create(
        organization=key.organization,
        name=key.name,
        created_by=created_by,
        model_codes=list(key.model_codes.all()),
        expires_at=key.expires_at,
        rpm_limit=key.rpm_limit,
        tpm_limit=key.tpm_limit,
        concurrency_limit=key.concurrency_limit,
        rotated_from=key,
    )
    api_key_revoke(key=key)
    return new, plaintext


def api_key_ensure_demo(*, organization: Organization, existing: str | None = None) -> str:
    """The demo's key (``make demo``): ``existing`` if it is still a live key of the
    organization, else a new key named ``demo``. Idempotent across demo restarts."""
    if existing and (lookup_id := parse_lookup_id(existing)):
        key = ApiKey.objects.filter(
            organization=organization, lookup_id=lookup_id, revoked_at__isnull=True
        ).first()
        live = key is not None and (key.expires_at is None or key.expires_at > timezone.now())
        if live and key is not None and token_matches(existing, key.secret_hash):
            return existing
    _, plaintext = api_key_create(organization=organization, name="demo")
    return plaintext

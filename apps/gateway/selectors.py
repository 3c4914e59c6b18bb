"""Reads for API keys (access-checked) and the snapshots the gateway loads off the hot path."""

from __future__ import annotations

from collections.abc import Iterable

from django.db.models import Prefetch, QuerySet

from apps.accounts.models import User
from apps.accounts.selectors import organization_ids_for_user
from apps.gateway.models import ApiKey
from apps.gateway.types import InstanceSnapshot, KeySnapshot, ModelSnapshot
from apps.instances.choices import ROUTABLE
from apps.instances.models import Instance
from apps.instances.models.onprem import tunneled_instance_ids
from apps.models.choices import ModelStatus
from apps.models.models import LlmModel
from inventiv.crypto import decrypt
from inventiv.errors import NotFound


def api_key_list_for_user(*, user: User) -> QuerySet[ApiKey]:
    return (
        ApiKey.objects.filter(organization_id__in=organization_ids_for_user(user=user))
        .select_related("organization")
        .prefetch_related(Prefetch("model_codes", queryset=LlmModel.objects.only("id", "name")))
        .order_by("-id")
    )


def api_key_get_for_user(*, user: User, key_id: int) -> ApiKey:
    key = api_key_list_for_user(user=user).filter(pk=key_id).first()
    if key is None:
        raise NotFound("No such API key.")
    return key


# --- Gateway snapshots (called in a thread, never on the hot path for a cached key) ------------


def _snapshot(key: ApiKey, allowed: Iterable[int]) -> KeySnapshot:
    ids = frozenset(allowed)
    return KeySnapshot(
        id=key.pk,
        lookup_id=key.lookup_id,
        secret_hash=key.secret_hash,
        organization_id=key.organization_id,
        allowed_model_code_ids=ids or None,
        expires_at=key.expires_at.timestamp() if key.expires_at else None,
        revoked=key.revoked_at is not None,
        rpm=key.rpm_limit or 0,
        tpm=key.tpm_limit or 0,
        concurrency=key.concurrency_limit or 0,
    )


def key_snapshots(*, lookup_ids: Iterable[str]) -> dict[str, KeySnapshot]:
    """The keys with these lookup ids (absent ones are simply missing). Two queries."""
    keys = list(ApiKey.objects.filter(lookup_id__in=list(lookup_ids)))
    allowed: dict[int, list[int]] = {}
    through = ApiKey.model_codes.through.objects.filter(apikey_id__in=[k.pk for k in keys])
    for key_id, model_code_id in through.values_list("apikey_id", "llmmodel_id"):
        allowed.setdefault(key_id, []).append(model_code_id)
    return {k.lookup_id: _snapshot(k, allowed.get(k.pk, ())) for k in keys}


# Engine secrets in clear by their ciphertext: each is decrypted once per process, not on every
# reload (a Fernet ciphertext is unique to its instance; a rotated secret is a new ciphertext).
_SECRETS: dict[str, str] = {}
_SECRETS_MAX = 100_000


def _engine_secret(encrypted: str) -> str:
    secret = _SECRETS.get(encrypted)
    if secret is None:
        secret = decrypt(encrypted)
        if len(_SECRETS) >= _SECRETS_MAX:
            _SECRETS.clear()
        _SECRETS[encrypted] = secret
    return secret


def instance_route_snapshot(*, instance_id: str, model_code_id: int) -> InstanceSnapshot | None:
    """One ready instance of this model code as the routing table holds it (one query, plus the
    tunnel lookup); None when it is not routable (any more)."""
    found = _instance_snapshots([model_code_id], instance_id=instance_id).get(model_code_id)
    return found[0] if found else None


def _instance_snapshots(
    model_code_ids: list[int], *, instance_id: str | None = None
) -> dict[int, list[InstanceSnapshot]]:
    by_model: dict[int, list[InstanceSnapshot]] = {}
    instances = Instance.objects.filter(llm_model_id__in=model_code_ids, status__in=ROUTABLE)
    if instance_id is not None:
        instances = instances.filter(id=instance_id)
    instances = instances.only(
        "id",
        "llm_model_id",
        "engine_host",
        "public_ip",
        "engine_port",
        "engine_secret_encrypted",
        "tls_fingerprint",
    )
    tunneled = tunneled_instance_ids([inst.id for inst in instances])  # fills its cache
    for inst in instances:
        if not inst.endpoint:
            continue
        try:
            secret = _engine_secret(inst.engine_secret_encrypted)
        except ValueError:  # unreadable secret: the instance cannot be called
            continue
        by_model.setdefault(inst.llm_model_id, []).append(
            InstanceSnapshot(
                id=str(inst.id),
                endpoint=inst.endpoint,
                secret=secret,
                tunnel=str(inst.id) in tunneled,
                tls_fingerprint=inst.tls_fingerprint,
            )
        )
    return by_model


def _context_length(model: LlmModel) -> int | None:
    """What bounds a request's tokens: the engine's ``--max-model-len`` when the model code's
    engine arguments set it, else the model code's declared ``max_model_len``."""
    engine_value = (model.engine_args or {}).get("max_model_len")
    if isinstance(engine_value, int) and not isinstance(engine_value, bool) and engine_value > 0:
        return engine_value
    return model.max_model_len or None


def routing_snapshot(
    *, organization_id: int | None = None, name: str | None = None
) -> list[ModelSnapshot]:
    """Every live model code (or the one named) with its ready instances. Three queries."""
    models = LlmModel.objects.exclude(status=ModelStatus.DECOMMISSIONED).select_related(
        "organization"
    )
    if organization_id is not None:
        models = models.filter(organization_id=organization_id, name=name)
    model_list = list(models.order_by("id"))
    instances = _instance_snapshots([m.pk for m in model_list])
    return [
        ModelSnapshot(
            id=m.pk,
            organization_id=m.organization_id,
            organization_slug=m.organization.slug,
            name=m.name,
            routing_policy=m.routing_policy,
            created=int(m.created_at.timestamp()),
            instances=tuple(sorted(instances.get(m.pk, []), key=lambda i: i.id)),
            max_model_len=_context_length(m),
            hold_timeout_s=float(m.hold_timeout_s),
            holds_at_zero=m.min_replicas == 0 and m.max_replicas > 0,
            engine=m.engine,
        )
        for m in model_list
    ]

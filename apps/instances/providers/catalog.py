"""Catalog sync: a provider's instance types, prices and per-zone availability into
``InstanceType`` rows. Safe to run twice; the provider is called outside any transaction."""

from __future__ import annotations

import logging
from dataclasses import asdict, dataclass

from django.db import transaction
from django.utils import timezone

from apps.instances.choices import ProviderKind
from apps.instances.models import InstanceType, Provider
from apps.instances.providers import get_adapter
from apps.instances.providers.base import ProviderError

logger = logging.getLogger(__name__)

SYNCABLE_KINDS = (ProviderKind.SCALEWAY, ProviderKind.AWS)


@dataclass
class CatalogSyncResult:
    provider_id: int
    created: int = 0
    updated: int = 0
    deactivated: int = 0
    error: str = ""

    def as_dict(self) -> dict[str, object]:
        return asdict(self)


def syncable_provider_ids() -> list[int]:
    return list(
        Provider.objects.filter(enabled=True, kind__in=SYNCABLE_KINDS)
        .order_by("id")
        .values_list("id", flat=True)
    )


def catalog_sync(*, provider_id: int) -> CatalogSyncResult:
    """Upsert the provider's catalog. Types no longer listed are deactivated (kept: instances
    refer to them). A provider error is returned in ``error`` (the rows stay as they were)."""
    result = CatalogSyncResult(provider_id=provider_id)
    provider = Provider.objects.filter(id=provider_id, kind__in=SYNCABLE_KINDS).first()
    if provider is None:
        result.error = "not a cloud provider"
        return result
    try:
        catalog = get_adapter(provider).list_instance_types()
    except ProviderError as exc:
        logger.warning("catalog sync of %s failed: %s", provider.name, exc.code)
        result.error = f"{exc.code}: {exc}"[:500]
        return result
    now = timezone.now()
    with transaction.atomic():
        seen: set[str] = set()
        for info in catalog:
            seen.add(info.code)
            _, created = InstanceType.objects.update_or_create(
                provider=provider,
                code=info.code,
                defaults={
                    "gpu_model": info.gpu_model[:64],
                    "gpu_count": info.gpu_count,
                    "vram_per_gpu_gb": info.vram_per_gpu_gb,
                    "vcpus": info.vcpus,
                    "ram_gb": info.ram_gb,
                    "hourly_price": info.hourly_price,
                    "currency": info.currency,
                    "availability": dict(info.availability),
                    "active": True,
                    "synced_at": now,
                },
            )
            if created:
                result.created += 1
            else:
                result.updated += 1
        result.deactivated = (
            InstanceType.objects.filter(provider=provider, active=True)
            .exclude(code__in=seen)
            .update(active=False, synced_at=now)
        )
    return result

"""Matching a model code's needs to provider offers, cheapest first."""

from __future__ import annotations

from dataclasses import dataclass
from decimal import Decimal

from apps.instances.choices import ProviderKind
from apps.instances.models import Instance, Provider


@dataclass(frozen=True)
class Offer:
    provider_id: int
    provider_name: str
    provider_kind: str
    instance_type_id: int | None
    instance_type_code: str
    zone: str
    gpu_model: str
    gpu_count: int
    vram_per_gpu_gb: int
    hourly_price: Decimal
    currency: str
    availability: str


def _local_offer(provider: Provider) -> Offer:
    return Offer(
        provider_id=provider.id,
        provider_name=provider.name,
        provider_kind=provider.kind,
        instance_type_id=None,
        instance_type_code="local",
        zone="local",
        gpu_model="",
        gpu_count=0,
        vram_per_gpu_gb=0,
        hourly_price=Decimal("0"),
        currency="EUR",
        availability="available",
    )


def offers_for_instance(instance: Instance) -> list[Offer]:
    """The offers to try, in order, to provision ``instance``."""
    provider = instance.provider
    if provider.kind == ProviderKind.LOCAL:
        return [_local_offer(provider)]
    return []

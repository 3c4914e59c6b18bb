"""Matching a model code's needs to provider offers (provider, zone, instance type), cheapest
first, with live availability.

Needs come from ``apps.instances.providers.sizing``: explicit GPU count × VRAM per GPU, or the
estimate from parameter count, dtype and context. Offers come from the synced catalog (cloud
providers: ``InstanceType`` rows, one offer per zone) and from registered hosts (on-premise:
one offer per host with enough free GPUs). Order: available, then scarce, then shortage (still tried
last: the catalog may be stale); within each, by hourly price, then fewer GPUs.
"""

from __future__ import annotations

from dataclasses import dataclass
from decimal import Decimal
from typing import TYPE_CHECKING

from django.conf import settings
from django.db.models import QuerySet

from apps.instances.choices import ProviderKind
from apps.instances.models import Instance, InstanceType, Provider
from apps.instances.providers.onprem import free_gpu_indices, placeable_hosts
from apps.instances.providers.sizing import TENSOR_PARALLEL_SIZES, GpuNeeds, needs_for_model

if TYPE_CHECKING:
    from apps.models.models import LlmModel


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


AVAILABILITY_RANK = {"available": 0, "scarce": 1, "shortage": 2}


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


def _sort_key(offer: Offer) -> tuple[int, Decimal, int, str, str, str]:
    return (
        AVAILABILITY_RANK.get(offer.availability, 3),
        offer.hourly_price,
        offer.gpu_count,
        offer.provider_name,
        offer.instance_type_code,
        offer.zone,
    )


def _catalog_offers(
    providers: list[Provider], needs: GpuNeeds, instance_type: InstanceType | None, zone: str
) -> list[Offer]:
    types: QuerySet[InstanceType] = InstanceType.objects.filter(
        provider__in=[p for p in providers if p.kind in (ProviderKind.SCALEWAY, ProviderKind.AWS)],
        active=True,
    ).select_related("provider")
    if instance_type is not None:
        types = types.filter(id=instance_type.id)
    offers: list[Offer] = []
    for item in types:
        if not needs.fits(gpu_count=item.gpu_count, vram_per_gpu_gb=item.vram_per_gpu_gb):
            continue
        for item_zone, availability in sorted((item.availability or {}).items()):
            if zone and item_zone != zone:
                continue
            offers.append(
                Offer(
                    provider_id=item.provider_id,
                    provider_name=item.provider.name,
                    provider_kind=item.provider.kind,
                    instance_type_id=item.id,
                    instance_type_code=item.code,
                    zone=item_zone,
                    gpu_model=item.gpu_model,
                    gpu_count=item.gpu_count,
                    vram_per_gpu_gb=item.vram_per_gpu_gb,
                    hourly_price=item.hourly_price,
                    currency=item.currency,
                    availability=str(availability),
                )
            )
    return offers


def gpus_to_allocate(needs: GpuNeeds, *, vram_per_gpu_gb: int, free: int) -> int | None:
    """How many of a host's GPUs (each ``vram_per_gpu_gb``) to give to a model with ``needs``:
    the fewest that fit, or None when the free ones do not."""
    for count in TENSOR_PARALLEL_SIZES:
        if count > free:
            return None
        if count >= max(needs.min_gpu_count, 1) and needs.fits(
            gpu_count=count, vram_per_gpu_gb=vram_per_gpu_gb
        ):
            return count
    return None


def _onprem_offers(providers: list[Provider], needs: GpuNeeds, zone: str) -> list[Offer]:
    offers: list[Offer] = []
    for provider in providers:
        if provider.kind != ProviderKind.ONPREM:
            continue
        price_per_gpu = Decimal(str((provider.config or {}).get("hourly_price_per_gpu", "0")))
        currency = str((provider.config or {}).get("currency", "EUR"))
        for host in placeable_hosts(provider):
            if zone and zone != host.name:
                continue
            free = len(free_gpu_indices(host))
            count = gpus_to_allocate(needs, vram_per_gpu_gb=host.vram_per_gpu_gb, free=free)
            if count is None:
                continue
            offers.append(
                Offer(
                    provider_id=provider.id,
                    provider_name=provider.name,
                    provider_kind=provider.kind,
                    instance_type_id=None,
                    instance_type_code=f"{count}x{host.gpu_model or 'GPU'}".replace(" ", "-"),
                    zone=host.name,
                    gpu_model=host.gpu_model,
                    gpu_count=count,
                    vram_per_gpu_gb=host.vram_per_gpu_gb,
                    hourly_price=price_per_gpu * count,
                    currency=currency,
                    availability="available",
                )
            )
    return offers


def offers_for_model(
    llm_model: LlmModel,
    *,
    provider: Provider | None = None,
    instance_type: InstanceType | None = None,
    zone: str | None = None,
) -> list[Offer]:
    """Every compatible offer for ``llm_model``, cheapest available first. ``provider``,
    ``instance_type`` and ``zone`` narrow the search (an explicit choice); otherwise the model
    code's own placement fields do."""
    provider = provider or llm_model.provider
    instance_type = instance_type or llm_model.instance_type
    zone = zone if zone is not None else llm_model.zone
    if instance_type is not None:
        provider = instance_type.provider
    providers = list(Provider.objects.filter(enabled=True).order_by("id"))
    if provider is not None:
        providers = [p for p in providers if p.id == provider.id]
    if not settings.LOCAL_PROVIDER_ENABLED:
        providers = [p for p in providers if p.kind != ProviderKind.LOCAL]
    needs = needs_for_model(llm_model)
    offers = [_local_offer(p) for p in providers if p.kind == ProviderKind.LOCAL]
    offers += _catalog_offers(providers, needs, instance_type, zone or "")
    if instance_type is None:
        offers += _onprem_offers(providers, needs, zone or "")
    return sorted(offers, key=_sort_key)


def offers_for_instance(instance: Instance) -> list[Offer]:
    """The offers to try, in order, to provision ``instance``: its explicit type/zone when the
    model code pins them, else every compatible offer of its provider (or of every provider
    when the model code names none). A local instance only ever runs locally."""
    if instance.provider.kind == ProviderKind.LOCAL:
        return [_local_offer(instance.provider)] if settings.LOCAL_PROVIDER_ENABLED else []
    model = instance.llm_model
    return offers_for_model(
        model,
        provider=model.provider,
        instance_type=instance.instance_type or model.instance_type,
        zone=instance.zone or model.zone,
    )

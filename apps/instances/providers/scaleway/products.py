"""What Scaleway sells that we use: GPU server types with hourly prices (EUR) and availability
per zone (the catalog), and the Marketplace images that boot them."""

from __future__ import annotations

from decimal import Decimal
from typing import Any

from apps.instances.providers.base import InstanceTypeInfo, ProviderError
from apps.instances.providers.scaleway.transport import (
    PAGE_SIZE,
    InstanceAPI,
    MarketplaceAPI,
    call,
)

GIB = 1024**3


def gpu_server_types(api: InstanceAPI, *, zones: list[str]) -> list[InstanceTypeInfo]:
    """The GPU server types of these zones (CPU-only types left out), merged by type, with
    each zone's availability (``shortage`` when the zone does not say)."""
    merged: dict[str, dict[str, Any]] = {}
    for zone in zones:
        types = _paged_dict(api.list_servers_types, zone=zone)
        availability = _paged_dict(api.get_server_types_availability, zone=zone)
        for code, server_type in types.items():
            gpu = server_type.gpu_info
            if not server_type.gpu or gpu is None:
                continue
            entry = merged.setdefault(
                code,
                {
                    "code": code,
                    "gpu_model": f"{gpu.gpu_manufacturer} {gpu.gpu_name}".strip(),
                    "gpu_count": int(server_type.gpu),
                    "vram_per_gpu_gb": round(gpu.gpu_memory / GIB),
                    "vcpus": int(server_type.ncpus),
                    "ram_gb": round(server_type.ram / GIB),
                    "hourly_price": Decimal(str(round(server_type.hourly_price, 4))),
                    "currency": "EUR",
                    "availability": {},
                },
            )
            item = availability.get(code)
            entry["availability"][zone] = str(item.availability) if item else "shortage"
    return [InstanceTypeInfo(**entry) for entry in merged.values()]


def _paged_dict(method: Any, *, zone: str) -> dict[str, Any]:
    """Scaleway's product lists are dicts keyed by type, paged with ``total_count``."""
    out: dict[str, Any] = {}
    page = 1
    while True:
        response = call(method, zone=zone, page=page, per_page=PAGE_SIZE)
        batch = response.servers or {}
        out.update(batch)
        if not batch or len(out) >= int(response.total_count or 0):
            return out
        page += 1


def marketplace_image(
    market: MarketplaceAPI, *, zone: str, commercial_type: str, image_label: str, volume_type: str
) -> str:
    """The id of the ``image_label`` image for this server type in this zone. Raises
    ProviderError when there is none."""
    images = call(
        market.list_local_images,
        zone=zone,
        image_label=image_label,
        type_="instance_sbs" if volume_type == "sbs_volume" else "instance_local",
        page_size=100,
    ).local_images
    for image in images:
        if not image.compatible_commercial_types or commercial_type in (
            image.compatible_commercial_types
        ):
            return str(image.id)
    raise ProviderError(
        f"No image {image_label!r} for {commercial_type} in {zone}; set 'image' or "
        "'image_label' in the provider settings."
    )

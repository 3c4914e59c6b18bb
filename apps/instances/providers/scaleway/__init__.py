"""Scaleway GPU Instances: the ProviderAdapter in ``adapter``."""

from apps.instances.providers.scaleway.adapter import ScalewayAdapter

__all__ = ["ScalewayAdapter"]

"""Scaleway GPU Instances: ``adapter`` (the ProviderAdapter), ``transport`` (the SDK client
with timeouts and pooled sessions, the call wrapper) and ``errors`` (Scaleway error bodies
mapped to our typed errors)."""

from apps.instances.providers.scaleway.adapter import ScalewayAdapter

__all__ = ["ScalewayAdapter"]

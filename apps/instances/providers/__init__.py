"""Provider adapters by kind. ``get_adapter(provider)`` is the only entry point."""

from __future__ import annotations

from importlib import import_module

from apps.instances.models import Provider
from apps.instances.providers.base import ProviderAdapter

# Adapters load on first use, by name: a process that never provisions on a cloud (the web
# server, the gateway) never imports boto3 or the Scaleway SDK.
_ADAPTERS = {
    "local": "apps.instances.providers.local.LocalAdapter",
    "scaleway": "apps.instances.providers.scaleway.ScalewayAdapter",
    "aws": "apps.instances.providers.aws.AwsAdapter",
    "onprem": "apps.instances.providers.onprem.OnPremAdapter",
}


def get_adapter(provider: Provider) -> ProviderAdapter:
    module_name, _, class_name = _ADAPTERS[provider.kind].rpartition(".")
    adapter_cls = getattr(import_module(module_name), class_name)
    adapter: ProviderAdapter = adapter_cls(provider)
    return adapter

"""Placement: which provider may host a model code's instances, and which one will. The
model-code side asks this through ``apps.instances.hosting``; the orchestrator asks it when it
creates replicas."""

from __future__ import annotations

from django.conf import settings

from apps.instances.choices import ProviderKind
from apps.instances.models import Provider
from apps.models.models import LlmModel
from inventiv.errors import ApplicationError


def provider_check_usable(provider: Provider) -> None:
    """Refuse a disabled provider, and the local one unless this deployment enables it (it
    runs tenants' engines on the control plane's own machine)."""
    if not provider.enabled:
        raise ApplicationError(f"Provider {provider.name} is disabled.", param="provider")
    if provider.kind == ProviderKind.LOCAL and not settings.LOCAL_PROVIDER_ENABLED:
        raise ApplicationError(
            f"Provider {provider.name} (local) is not enabled on this platform.",
            param="provider",
            code="provider_not_enabled",
        )


def provider_for_model(llm_model: LlmModel) -> Provider:
    """The provider new instances of ``llm_model`` go to: its explicit one, else the first
    enabled provider (the local one when enabled, for development)."""
    if llm_model.provider_id is not None:
        provider = llm_model.provider
        assert provider is not None
        provider_check_usable(provider)
        return provider
    providers = Provider.objects.filter(enabled=True).order_by("id")
    if not settings.LOCAL_PROVIDER_ENABLED:
        providers = providers.exclude(kind=ProviderKind.LOCAL)
    provider = providers.first()
    if provider is None:
        raise ApplicationError("No enabled provider can host this model code.", code="no_provider")
    return provider

"""``manage.py ensure_providers``: create the providers the settings enable and the database
lacks. Today that is the local provider (``INVENTIV_LOCAL_PROVIDER=true``): a row named
``local``. Run at every start by compose's one-shot ``migrate`` service, so enabling the local
provider needs no shell. Idempotent; it never re-enables, changes or deletes a row an operator
edited (an operator who disabled ``local`` in the admin keeps it disabled)."""

from __future__ import annotations

from typing import Any

from django.conf import settings
from django.core.management.base import BaseCommand

from apps.instances.choices import ProviderKind
from apps.instances.models import Provider

LOCAL_PROVIDER_NAME = "local"


class Command(BaseCommand):
    help = "Create the providers enabled by the settings (the local provider). Idempotent."

    def handle(self, *args: Any, **options: Any) -> None:
        if not settings.LOCAL_PROVIDER_ENABLED:
            self.stdout.write("local provider: disabled (INVENTIV_LOCAL_PROVIDER); nothing to do")
            return
        provider, created = Provider.objects.get_or_create(
            name=LOCAL_PROVIDER_NAME, defaults={"kind": ProviderKind.LOCAL}
        )
        if provider.kind != ProviderKind.LOCAL:
            self.stderr.write(
                f"a provider named {LOCAL_PROVIDER_NAME!r} exists with kind {provider.kind!r}: "
                "left as it is; the local provider was not created"
            )
            return
        state = "created" if created else ("present" if provider.enabled else "present, disabled")
        self.stdout.write(f"local provider: {state}")

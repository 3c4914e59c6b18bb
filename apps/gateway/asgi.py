"""The gateway's ASGI application.

Standalone: ``python -m apps.gateway`` (or ``uvicorn apps.gateway.asgi:application --port
8002``); this module sets Django up itself. In the web process, ``inventiv.asgi`` mounts the
same application at ``/v1`` (Django is already set up there).
"""

from __future__ import annotations

import os

os.environ.setdefault("DJANGO_SETTINGS_MODULE", "inventiv.settings")

import django
from django.apps import apps

if not apps.ready:
    django.setup()

from apps.gateway.app import Gateway

application = Gateway()

"""The one ASGI router: ``/v1/...`` to the gateway, ``/ws/...`` to Channels consumers,
everything else to Django."""

from __future__ import annotations

import gc
import os

from django.core.asgi import get_asgi_application

os.environ.setdefault("DJANGO_SETTINGS_MODULE", "inventiv.settings")
django_asgi_app = get_asgi_application()

from channels.auth import AuthMiddlewareStack  # noqa: E402
from channels.routing import ProtocolTypeRouter, URLRouter  # noqa: E402
from channels.security.websocket import AllowedHostsOriginValidator  # noqa: E402
from django.urls import path  # noqa: E402

from apps.gateway.asgi import application as gateway_app  # noqa: E402
from apps.instances.agents.api.asgi import (  # noqa: E402
    HeartbeatApp,
    reserve_heartbeat_connections,
)
from inventiv.consumers import EventsConsumer  # noqa: E402
from inventiv.pathrouter import PathPrefixRouter  # noqa: E402

websocket_urlpatterns = [path("ws/events/", EventsConsumer.as_asgi())]


application = ProtocolTypeRouter(
    {
        # Agents' heartbeats skip Django's request machinery (apps/instances/agents/api/asgi.py).
        # Steady beats on the event loop, on connections taken out of this process's pool.
        "http": HeartbeatApp(
            PathPrefixRouter(gateway=gateway_app, default=django_asgi_app),
            db_connections=reserve_heartbeat_connections(),
        ),
        "websocket": AllowedHostsOriginValidator(
            AuthMiddlewareStack(URLRouter(websocket_urlpatterns))
        ),
    }
)

# What the imports made lives as long as the process: out of the cyclic collector's sight, so
# that a full collection scans only what requests left (measured in bench/fleet.py at 10,000
# instances: full collections paused the event loop 108-121 ms, the heartbeats' p99; 8-23 ms
# after this).
gc.collect()
gc.freeze()

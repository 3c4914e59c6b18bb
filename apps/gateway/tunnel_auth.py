"""Who may hold a tunnel (``apps.gateway.tunnel``): an agent's instance credential, checked as
the agent API checks it (keyed hash lookup, constant-time compare), for a live instance."""

from __future__ import annotations

from apps.instances.agents.services import SERVE_STATUSES, AgentAuthError, agent_authenticate
from apps.instances.choices import InstanceStatus

TUNNEL_STATUSES = SERVE_STATUSES | {InstanceStatus.DRAINING}


def tunnel_instance_id(*, credential: str) -> str | None:
    """The id of the instance this credential belongs to when it is live (serving or
    draining), else None. Runs in a thread (ORM), off the event loop."""
    try:
        instance = agent_authenticate(credential=credential)
    except AgentAuthError:
        return None
    if instance.status not in TUNNEL_STATUSES:
        return None
    return str(instance.id)

"""The heartbeat endpoint's one implementation, shared by the Django view (tests, WSGI) and the
ASGI fast path (``asgi.py``): bytes in, status and JSON bytes out, errors in the envelope."""

from __future__ import annotations

import json

from agent.protocol import PROTOCOL_VERSION, Heartbeat
from apps.instances.agents.api.wire import bearer_from_header, parse_body
from apps.instances.agents.services import (
    AgentAuthError,
    agent_heartbeat_quick,
    agent_identify,
)
from inventiv.errors import ApplicationError


def heartbeat_answer(*, authorization: str, body: bytes) -> tuple[int, bytes]:
    """``(HTTP status, JSON body)`` for one heartbeat request. The credential is checked
    before the body is parsed, so an unauthenticated caller learns nothing about the shape."""
    try:
        credential = bearer_from_header(authorization, AgentAuthError("Invalid agent credential."))
        row = agent_identify(credential=credential)
        message = parse_body(body, Heartbeat, version=PROTOCOL_VERSION)
        return 200, agent_heartbeat_quick(row=row, heartbeat=message)
    except ApplicationError as exc:
        return exc.status_code, json.dumps(exc.body()).encode()

"""Which agent releases and protocol versions this control plane speaks.

The project has one version, ``agent.__version__`` (re-exported as ``inventiv.__version__``).
An agent of another release that speaks the same protocol version is served with a warning; a
protocol version other than ``agent.protocol.PROTOCOL_VERSION`` (or, for host agents,
``agent.host_protocol.HOST_PROTOCOL_VERSION``) is refused by the agent API
(``unsupported_protocol``). See ``docs/releasing.md``."""

from __future__ import annotations

from inventiv import __version__ as CONTROL_PLANE_VERSION

__all__ = ["CONTROL_PLANE_VERSION", "agent_version_mismatch"]


def agent_version_mismatch(agent_version: str) -> bool:
    """Whether an agent reported a release other than the control plane's ("" is unknown)."""
    return bool(agent_version) and agent_version != CONTROL_PLANE_VERSION

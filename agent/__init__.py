"""Inventiv agent: runs on each GPU machine, supervises one inference engine and reports to the
control plane over the protocol in :mod:`agent.protocol`. Never imports Django.

``__version__`` is the one version of the whole project: ``pyproject.toml`` reads it for the
agent wheel, the control plane re-exports it as ``inventiv.__version__``, and every agent
reports it in registration and heartbeats (see ``docs/releasing.md``)."""

__version__ = "0.1.0"

"""Inventiv agent: runs on each GPU machine, supervises one inference engine and reports to the
control plane over the protocol in :mod:`agent.protocol`. Never imports Django."""

__version__ = "0.1.0"

"""Inventiv Agents: the Django project package (settings, URLs, ASGI, Celery).

``__version__`` is the agent package's (``agent.__version__``): the platform and the agents
it installs have one version, kept in one place (see ``docs/releasing.md``)."""

from agent import __version__
from inventiv.celery import app as celery_app

__all__ = ["__version__", "celery_app"]

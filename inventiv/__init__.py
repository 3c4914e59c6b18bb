"""Inventiv Agents: the Django project package (settings, URLs, ASGI, Celery)."""

from inventiv.celery import app as celery_app

__all__ = ["celery_app"]

"""The Celery app: the orchestrator's command bus. Its beat schedule is in settings
(``CELERY_BEAT_SCHEDULE``), in code, each entry with an expiry."""

from __future__ import annotations

import os

from celery import Celery

import inventiv.metrics  # noqa: F401  (connects the task-duration and failure signals)

os.environ.setdefault("DJANGO_SETTINGS_MODULE", "inventiv.settings")

app = Celery("inventiv")
app.config_from_object("django.conf:settings", namespace="CELERY")
app.autodiscover_tasks()

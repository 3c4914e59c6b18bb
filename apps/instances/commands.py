"""Commands (the seed's ``CMD:*``): the one door from intent to the worker.

Services and the orchestrator record intent in the database, then call one function here; it
enqueues the Celery task **after the current transaction commits** (at once when there is
none), by the task's registered name. So services never import tasks: tasks call the
orchestrator and services, and this module sits below both. A command lost between the commit
and the enqueue (a crash, a broker outage) is re-sent by the reconciler, which finds the intent
in the database.
"""

from __future__ import annotations

from typing import Any

from celery import current_app
from django.db import transaction

PROVISION_INSTANCE = "apps.instances.tasks.provision_instance_task"
TERMINATE_INSTANCE = "apps.instances.tasks.terminate_instance_task"
POWER_INSTANCE = "apps.instances.tasks.instance_power_task"
CONVERGE_MODEL_CODE = "apps.instances.tasks.reconcile_model_task"


def _send_on_commit(name: str, **kwargs: Any) -> None:
    def send() -> None:
        app = current_app
        if name not in app.tasks:  # a web process that has not loaded the task modules yet
            app.loader.import_default_modules()
        app.tasks[name].delay(**kwargs)

    transaction.on_commit(send)


def provision_instance(*, instance_id: str) -> None:
    """``CMD:PROVISION_INSTANCE``: find a machine for the instance and start its agent."""
    _send_on_commit(PROVISION_INSTANCE, instance_id=instance_id)


def terminate_instance(*, instance_id: str) -> None:
    """``CMD:TERMINATE_INSTANCE``: release the instance's machine and everything attached."""
    _send_on_commit(TERMINATE_INSTANCE, instance_id=instance_id)


def power_instance(*, instance_id: str, action: str) -> None:
    """A power action (``poweron``, ``poweroff``, ``reboot``) on the instance's machine."""
    _send_on_commit(POWER_INSTANCE, instance_id=instance_id, action=action)


def converge_model_code(*, model_code_id: int) -> None:
    """``CMD:DEPLOY`` / ``CMD:SCALE`` / ``CMD:DECOMMISSION``: converge one model code now."""
    _send_on_commit(CONVERGE_MODEL_CODE, model_code_id=model_code_id)

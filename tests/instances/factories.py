from __future__ import annotations

from datetime import timedelta
from typing import Any

from django.utils import timezone

from apps.instances.choices import InstanceStatus
from apps.instances.models import Instance, Provider
from apps.models.models import LlmModel
from inventiv import crypto


def make_instance(
    model: LlmModel,
    status: InstanceStatus = InstanceStatus.PROVISIONING,
    *,
    age_s: float = 0,
    **fields: Any,
) -> tuple[Instance, str]:
    """An instance row in ``status`` (no machine), and its plaintext bootstrap token."""
    token = crypto.new_token("ivb_")
    changed = timezone.now() - timedelta(seconds=age_s)
    instance = Instance.objects.create(
        organization_id=model.organization_id,
        llm_model=model,
        provider=model.provider or Provider.objects.get(kind="local"),
        status=status,
        status_changed_at=changed,
        engine_host="127.0.0.1",
        engine_port=fields.pop("engine_port", 9),
        engine_secret_encrypted=crypto.encrypt("s"),
        bootstrap_token_hash=crypto.token_hash(token),
        bootstrap_token_encrypted=crypto.encrypt(token),
        bootstrap_expires_at=timezone.now() + timedelta(minutes=5),
        command_sent_at=timezone.now(),
        **fields,
    )
    return instance, token

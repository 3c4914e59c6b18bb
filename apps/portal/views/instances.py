"""The instance page: status, the timeline of every transition and provisioning attempt
(refreshed live: the page's script re-fetches the fragment when the WebSocket brings an event
of this instance), heartbeat age, the engine's metrics."""

from __future__ import annotations

from typing import Any

from django.http import HttpRequest, HttpResponse
from django.shortcuts import render
from django.utils import timezone

from apps.instances.choices import InstanceStatus
from apps.instances.models import Instance
from apps.instances.selectors import instance_get_for_user
from apps.portal.context import Portal, portal_view

IN_PROGRESS = frozenset(
    {InstanceStatus.PROVISIONING, InstanceStatus.BOOTING, InstanceStatus.STARTING}
)

# The engine metrics shown, in this order, with their labels (the agent's heartbeat names).
METRICS = (
    ("requests_running", "Requests running"),
    ("requests_waiting", "Requests waiting"),
    ("kv_cache_usage", "KV cache in use (0-1)"),
    ("prompt_tokens_total", "Prompt tokens (total)"),
    ("generation_tokens_total", "Generated tokens (total)"),
)


def timeline(instance: Instance) -> list[dict[str, Any]]:
    """Transitions and provisioning attempts, oldest first."""
    items: list[dict[str, Any]] = [
        {
            "at": e.created_at,
            "kind": "transition",
            "title": f"{e.from_status or 'created'} → {e.to_status}",
            "status": e.to_status,
            "detail": e.reason,
        }
        for e in instance.events.order_by("created_at", "id")
    ]
    for attempt in instance.attempts.select_related("provider").order_by("created_at", "id"):
        parts = (attempt.provider.name, attempt.instance_type_code, attempt.zone)
        where = " ".join(dict.fromkeys(x for x in parts if x))
        detail = attempt.message
        if attempt.error_code:
            detail = f"{attempt.error_code}: {detail}" if detail else attempt.error_code
        items.append(
            {
                "at": attempt.created_at,
                "kind": "attempt",
                "title": f"attempt on {where}: {attempt.outcome}",
                "status": attempt.outcome,
                "detail": detail,
            }
        )
    return sorted(items, key=lambda item: item["at"])


def _metrics(instance: Instance) -> list[tuple[str, Any]]:
    values = instance.engine_metrics or {}
    shown = [(label, values[name]) for name, label in METRICS if name in values]
    known = {name for name, _ in METRICS}
    shown += [
        (name.replace("_", " "), value)
        for name, value in sorted(values.items())
        if name not in known and isinstance(value, int | float)
    ]
    return shown


@portal_view
def instance_page(request: HttpRequest, portal: Portal, instance_id: str) -> HttpResponse:
    instance = portal.mine(instance_get_for_user(user=portal.user, instance_id=instance_id))
    heartbeat_age = (
        (timezone.now() - instance.last_heartbeat_at).total_seconds()
        if instance.last_heartbeat_at
        else None
    )
    context = {
        "portal": portal,
        "instance": instance,
        "timeline": timeline(instance),
        "heartbeat_age": heartbeat_age,
        "metrics": _metrics(instance),
        "in_progress": instance.status in IN_PROGRESS,
    }
    if request.headers.get("HX-Request"):
        return render(request, "portal/_instance_live.html", context)
    return render(request, "portal/instance.html", context)

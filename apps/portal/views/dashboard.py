"""The dashboard: the organization's model codes and instances, today's requests and tokens,
the month's spend and what is left of its budgets."""

from __future__ import annotations

from django.http import HttpRequest, HttpResponse
from django.shortcuts import render

from apps.billing.services.budgets import month_start
from apps.instances.choices import InstanceStatus
from apps.instances.selectors import instance_list_for_user
from apps.models.selectors import model_list_for_user
from apps.portal import usage
from apps.portal.context import Portal, portal_view


@portal_view
def dashboard(request: HttpRequest, portal: Portal) -> HttpResponse:
    org_id = portal.organization.id
    model_codes = list(model_list_for_user(user=portal.user).filter(organization_id=org_id))
    instances = list(
        instance_list_for_user(user=portal.user)
        .filter(organization_id=org_id, archived=False)
        .exclude(status=InstanceStatus.TERMINATED)[:50]
    )
    ready: dict[int, int] = {}
    for instance in instances:
        if instance.status == InstanceStatus.READY:
            ready[instance.llm_model_id] = ready.get(instance.llm_model_id, 0) + 1
    rows = [(m, ready.get(m.id, 0)) for m in model_codes]
    context = {
        "portal": portal,
        "rows": rows,
        "instances": instances,
        "today": usage.totals(user=portal.user, organization_id=org_id, since=usage.today()),
        "month": usage.totals(user=portal.user, organization_id=org_id, since=month_start()),
        "budgets": usage.budgets(user=portal.user, organization_id=org_id),
    }
    template = "portal/_dashboard_live.html" if request.headers.get("HX-Request") else None
    return render(request, template or "portal/dashboard.html", context)

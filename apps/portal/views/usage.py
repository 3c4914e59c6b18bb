"""Usage and billing: tokens and spend by day (chart), by model code and by key; the CSV export
(the REST endpoint, with the session); the organization's budgets and their warnings."""

from __future__ import annotations

from datetime import timedelta
from typing import Any

from django.contrib import messages
from django.http import HttpRequest, HttpResponse
from django.shortcuts import redirect, render
from django.views.decorators.http import require_POST

from apps.accounts.permissions import Capability
from apps.billing.selectors import budget_get_for_user
from apps.billing.services.budgets import budget_delete, budget_set
from apps.gateway.selectors import api_key_get_for_user, api_key_list_for_user
from apps.portal import usage
from apps.portal.context import Portal, flash_error, form_errors, portal_view
from apps.portal.forms import BudgetForm
from inventiv.errors import ApplicationError

DAYS = 30


def _keys(portal: Portal) -> list[tuple[int, str]]:
    return list(
        api_key_list_for_user(user=portal.user)
        .filter(organization=portal.organization)
        .values_list("id", "name")
    )


def _context(portal: Portal, form: BudgetForm) -> dict[str, Any]:
    org_id = portal.organization.id
    days = usage.by_day(user=portal.user, organization_id=org_id, days=DAYS)
    since = usage.today() - timedelta(days=DAYS - 1)
    key_names = dict(_keys(portal))
    by_key = [
        (key_names.get(k, "(deleted key)") if k else "(no key)", t)
        for k, t in usage.by_field(
            user=portal.user, organization_id=org_id, since=since, name="api_key_id"
        )
    ]
    by_model = usage.by_field(
        user=portal.user, organization_id=org_id, since=since, name="model_code"
    )
    total = usage.Totals()
    for _, t in days:
        total.requests += t.requests
        total.prompt_tokens += t.prompt_tokens
        total.completion_tokens += t.completion_tokens
        for c, v in t.spend.items():
            total.spend[c] = total.spend.get(c, 0) + v
    budgets = usage.budgets(user=portal.user, organization_id=org_id)
    return {
        "portal": portal,
        "days": days,
        "series": usage.chart_series(days),
        "by_model": by_model,
        "by_key": by_key,
        "top_model": max((t.tokens for _, t in by_model), default=0),
        "top_key": max((t.tokens for _, t in by_key), default=0),
        "total": total,
        "budgets": budgets,
        "warnings": [b for b in budgets if b.level != "ok"],
        "form": form,
        "can_manage": portal.can(Capability.BILLING_MANAGE),
        "export_since": since.strftime("%Y-%m-%dT%H:%M:%SZ"),
    }


@portal_view
def usage_page(request: HttpRequest, portal: Portal) -> HttpResponse:
    form = BudgetForm(keys=_keys(portal))
    context = _context(portal, form)
    if request.headers.get("HX-Request"):
        return render(request, "portal/_usage_live.html", context)
    return render(request, "portal/usage.html", context)


@portal_view
def budgets(request: HttpRequest, portal: Portal) -> HttpResponse:
    """POST: set the organization's (or one key's) monthly budget."""
    if request.method != "POST":
        return redirect("portal:usage")
    portal.require(Capability.BILLING_MANAGE)
    form = BudgetForm(request.POST, keys=_keys(portal))
    if form.is_valid():
        data = form.cleaned_data
        try:
            key = (
                portal.mine(api_key_get_for_user(user=portal.user, key_id=int(data["api_key"])))
                if data.get("api_key")
                else None
            )
            budget_set(
                organization=portal.organization,
                api_key=key,
                currency=data["currency"],
                monthly_limit=data["monthly_limit"],
                warn_at_percent=data["warn_at_percent"],
            )
        except ApplicationError as exc:
            form_errors(form, exc)
        else:
            messages.success(request, "Budget saved: the gateways enforce it within seconds.")
            return redirect("portal:usage")
    return render(request, "portal/usage.html", _context(portal, form), status=400)


@require_POST
@portal_view
def budget_remove(request: HttpRequest, portal: Portal, budget_id: int) -> HttpResponse:
    budget = portal.mine(budget_get_for_user(user=portal.user, budget_id=budget_id))
    try:
        portal.require(Capability.BILLING_MANAGE)
        budget_delete(budget=budget)
        messages.success(request, "Budget removed.")
    except ApplicationError as exc:
        flash_error(request, exc)
    return redirect("portal:usage")

"""The customer portal: server-rendered pages over the same selectors as the REST API."""

from __future__ import annotations

from django.contrib.auth.decorators import login_required
from django.http import HttpResponse
from django.shortcuts import render

from apps.accounts.auth import AuthenticatedHttpRequest
from apps.accounts.models import Membership
from apps.instances.models import Instance
from apps.models.models import LlmModel


@login_required
def home(request: AuthenticatedHttpRequest) -> HttpResponse:
    memberships = list(Membership.objects.select_related("organization").filter(user=request.user))
    org_ids = [m.organization_id for m in memberships]
    model_codes = (
        LlmModel.objects.filter(organization_id__in=org_ids)
        .select_related("organization")
        .order_by("organization_id", "name")
    )
    instances = (
        Instance.objects.filter(organization_id__in=org_ids, archived=False)
        .exclude(status="terminated")
        .select_related("llm_model", "provider")
        .order_by("-created_at")[:100]
    )
    return render(
        request,
        "portal/home.html",
        {"memberships": memberships, "model_codes": model_codes, "instances": instances},
    )

"""The playground: a chat with one of the organization's model codes, streamed from the
gateway (same origin, ``/v1/chat/completions``) by the browser with one of the user's keys.
The key is typed (or handed over by the keys page right after creating one, in the tab's
sessionStorage): its secret never comes back from the server."""

from __future__ import annotations

from django.http import HttpRequest, HttpResponse
from django.shortcuts import render

from apps.models.choices import DEPLOYED_STATUSES
from apps.models.selectors import model_list_for_user
from apps.portal.context import Portal, portal_view


@portal_view
def playground(request: HttpRequest, portal: Portal) -> HttpResponse:
    models = list(
        model_list_for_user(user=portal.user).filter(
            organization_id=portal.organization.id, status__in=DEPLOYED_STATUSES
        )
    )
    chosen = request.GET.get("model", "")
    return render(
        request,
        "portal/playground.html",
        {"portal": portal, "models": models, "chosen": chosen},
    )

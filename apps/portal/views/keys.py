"""API keys: create (the secret shown once, with a copy button), limits, allowed model codes,
expiry, revoke, rotate. The secret is never stored: it is rendered in the answer to the POST
that made it and nowhere else."""

from __future__ import annotations

from datetime import UTC, datetime, time
from typing import Any

from django.contrib import messages
from django.http import HttpRequest, HttpResponse
from django.shortcuts import redirect, render
from django.views.decorators.http import require_POST

from apps.accounts.permissions import Capability
from apps.gateway import services
from apps.gateway.models import ApiKey
from apps.gateway.selectors import api_key_get_for_user, api_key_list_for_user
from apps.models.selectors import model_list_for_user
from apps.portal.context import Portal, flash_error, form_errors, portal_view
from apps.portal.forms import KeyCreateForm, KeyLimitsForm
from inventiv.errors import ApplicationError


def _model_choices(portal: Portal) -> list[tuple[int, str]]:
    return list(
        model_list_for_user(user=portal.user)
        .filter(organization_id=portal.organization.id)
        .values_list("id", "name")
    )


def _page(
    request: HttpRequest,
    portal: Portal,
    form: KeyCreateForm,
    created: tuple[ApiKey, str] | None = None,
    status: int = 200,
) -> HttpResponse:
    keys = list(api_key_list_for_user(user=portal.user).filter(organization=portal.organization))
    context: dict[str, Any] = {
        "portal": portal,
        "form": form,
        "keys": keys,
        "created": created,
        "can_manage": portal.can(Capability.KEYS_MANAGE),
        "rows": [
            (
                k,
                KeyLimitsForm(
                    initial={
                        "rpm_limit": k.rpm_limit,
                        "tpm_limit": k.tpm_limit,
                        "concurrency_limit": k.concurrency_limit,
                    },
                    auto_id=f"id_k{k.id}_%s",
                ),
            )
            for k in keys
        ],
    }
    return render(request, "portal/keys.html", context, status=status)


@portal_view
def keys(request: HttpRequest, portal: Portal) -> HttpResponse:
    """GET: the keys. POST: create one; the answer shows its secret, once."""
    form = KeyCreateForm(request.POST or None, model_codes=_model_choices(portal))
    if request.method != "POST":
        return _page(request, portal, form)
    portal.require(Capability.KEYS_MANAGE)
    if form.is_valid():
        data = form.cleaned_data
        models = list(
            model_list_for_user(user=portal.user).filter(
                organization_id=portal.organization.id, id__in=[int(i) for i in data["model_codes"]]
            )
        )
        expires = data.get("expires_on")
        try:
            created = services.api_key_create(
                organization=portal.organization,
                name=data["name"],
                created_by=portal.user,
                model_codes=models,
                expires_at=datetime.combine(expires, time.min, tzinfo=UTC) if expires else None,
                rpm_limit=data.get("rpm_limit"),
                tpm_limit=data.get("tpm_limit"),
                concurrency_limit=data.get("concurrency_limit"),
            )
        except ApplicationError as exc:
            if exc.param == "expires_at":
                exc.param = "expires_on"
                exc.message = "The expiry must be a day in the future."
            form_errors(form, exc)
        else:
            fresh = KeyCreateForm(model_codes=_model_choices(portal))
            return _page(request, portal, fresh, created=created, status=201)
    return _page(request, portal, form, status=400)


def _key(portal: Portal, key_id: int) -> ApiKey:
    key = portal.mine(api_key_get_for_user(user=portal.user, key_id=key_id))
    portal.require(Capability.KEYS_MANAGE)
    return key


@require_POST
@portal_view
def key_revoke(request: HttpRequest, portal: Portal, key_id: int) -> HttpResponse:
    key = services.api_key_revoke(key=_key(portal, key_id))
    messages.success(request, f"Key {key.name} revoked: every gateway refuses it now.")
    return redirect("portal:keys")


@require_POST
@portal_view
def key_rotate(request: HttpRequest, portal: Portal, key_id: int) -> HttpResponse:
    key = _key(portal, key_id)
    try:
        created = services.api_key_rotate(key=key, created_by=portal.user)
    except ApplicationError as exc:
        flash_error(request, exc)
        return redirect("portal:keys")
    form = KeyCreateForm(model_codes=_model_choices(portal))
    messages.success(request, "Key rotated: the old secret stopped working.")
    return _page(request, portal, form, created=created, status=201)


@require_POST
@portal_view
def key_limits(request: HttpRequest, portal: Portal, key_id: int) -> HttpResponse:
    key = _key(portal, key_id)
    form = KeyLimitsForm(request.POST)
    if not form.is_valid():
        for name, errors in form.errors.items():
            words = " ".join(str(e) for e in errors)
            messages.error(request, f"{form.fields[name].label}: {words}")
        return redirect("portal:keys")
    try:
        services.api_key_set_limits(key=key, **form.cleaned_data)
        messages.success(request, f"Limits of key {key.name} saved.")
    except ApplicationError as exc:
        flash_error(request, exc)
    return redirect("portal:keys")

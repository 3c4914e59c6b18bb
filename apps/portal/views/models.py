"""Model codes: the wizard (model, hardware, offers with price and estimated cost per million
tokens, scaling policy, deploy) and the model-code page (replicas, scaling decisions, scale,
pause to zero, decommission, usage, the example call)."""

from __future__ import annotations

from typing import Any

from django.contrib import messages
from django.db import transaction
from django.http import HttpRequest, HttpResponse
from django.shortcuts import redirect, render
from django.views.decorators.http import require_POST

from apps.accounts.permissions import Capability
from apps.gateway.selectors import api_key_list_for_user
from apps.instances.choices import InstanceStatus
from apps.instances.models import InstanceType, Provider
from apps.instances.providers.matching import Offer, offers_for_model
from apps.instances.providers.sizing import needs_for_model
from apps.instances.selectors import instance_list_for_user
from apps.models import services
from apps.models.models import LlmModel, ScalingDecision
from apps.models.selectors import model_get_for_user
from apps.portal import usage
from apps.portal.context import Portal, flash_error, form_errors, portal_view
from apps.portal.estimates import CATALOG, cost_per_million, tokens_per_second
from apps.portal.forms import ModelCodeForm, ReplicasForm
from inventiv.errors import ApplicationError

AUTO = "auto"


def offer_value(offer: Offer) -> str:
    """An offer as the wizard's radio value: provider, instance type (or -), zone."""
    return f"{offer.provider_id}:{offer.instance_type_id or '-'}:{offer.zone}"


def _offers(form: ModelCodeForm, portal: Portal) -> tuple[str, list[dict[str, Any]]]:
    values = form.model_values()
    draft = LlmModel(organization=portal.organization, name="draft", **values)
    needs = needs_for_model(draft).explanation
    rows = []
    for offer in offers_for_model(draft):
        precision = {
            "parameter_count_b": values.get("parameter_count_b"),
            "dtype": values["dtype"],
            "quantization": values["quantization"],
        }
        rate = tokens_per_second(offer, **precision)
        rows.append(
            {
                "offer": offer,
                "value": offer_value(offer),
                "tokens_per_s": round(rate) if rate else None,
                "cost_per_million": cost_per_million(offer, **precision),
            }
        )
    return needs, rows


def _placement(value: str) -> dict[str, Any]:
    """The model code's placement for the chosen offer ({} for "cheapest available")."""
    if not value or value == AUTO:
        return {}
    try:
        provider_id, type_id, zone = value.split(":", 2)
        provider = Provider.objects.get(id=int(provider_id))
        instance_type = (
            None if type_id == "-" else InstanceType.objects.get(id=int(type_id), provider=provider)
        )
    except (ValueError, Provider.DoesNotExist, InstanceType.DoesNotExist):
        raise ApplicationError(
            "This offer is no longer available: pick another one.", param="offer"
        ) from None
    placement: dict[str, Any] = {"provider": provider, "instance_type": instance_type}
    if instance_type is not None:
        placement["zone"] = zone
    return placement


@portal_view
def wizard(request: HttpRequest, portal: Portal) -> HttpResponse:
    """GET: the wizard. POST: create the model code, set its policy and deploy it, in one
    transaction (a refusal leaves nothing behind), then its page."""
    can_manage = portal.can(Capability.MODELS_MANAGE) and portal.can(Capability.DEPLOYMENTS_MANAGE)
    form = ModelCodeForm(request.POST or None)
    if request.method == "POST":
        portal.require(Capability.MODELS_MANAGE)
        portal.require(Capability.DEPLOYMENTS_MANAGE)
        if form.is_valid():
            try:
                with transaction.atomic():
                    model = services.model_create(
                        organization=portal.organization,
                        name=form.cleaned_data["name"],
                        **form.model_values(),
                        **_placement(form.cleaned_data.get("offer") or ""),
                    )
                    services.model_set_scaling_policy(model=model, **form.policy_values())
                    if request.POST.get("deploy", "1") == "1":
                        services.model_deploy(model=model, by=portal.user.email)
                messages.success(
                    request,
                    f"Model code {model.name} created"
                    + (
                        ": its first replica is starting."
                        if model.status != "draft"
                        else " (not deployed)."
                    ),
                )
                return redirect("portal:model", model_code_id=model.id)
            except ApplicationError as exc:
                form_errors(form, exc)
    return render(
        request,
        "portal/wizard.html",
        {"portal": portal, "form": form, "catalog": CATALOG, "can_manage": can_manage},
    )


@portal_view
def wizard_offers(request: HttpRequest, portal: Portal) -> HttpResponse:
    """The wizard's offers for the hardware filled in so far (an htmx fragment)."""
    form = ModelCodeForm(request.POST or request.GET or None)
    form.is_valid()  # the offers need only the hardware fields; name errors do not matter here
    hardware = ("model_id", "gpu_count", "vram_per_gpu_gb", "parameter_count_b", "dtype")
    problems = {k: v for k, v in form.errors.items() if k in hardware}
    context: dict[str, Any] = {"problems": problems, "chosen": form.data.get("offer") or AUTO}
    if not problems and hasattr(form, "cleaned_data"):
        context["needs"], context["rows"] = _offers(form, portal)
    return render(request, "portal/_offers.html", context)


def _model_context(portal: Portal, model: LlmModel, request: HttpRequest) -> dict[str, Any]:
    instances = list(
        instance_list_for_user(user=portal.user).filter(llm_model=model, archived=False)[:50]
    )
    decisions = list(
        ScalingDecision.objects.filter(model_code=model).order_by("-created_at", "-id")[:20]
    )
    keys = [
        k
        for k in api_key_list_for_user(user=portal.user).filter(
            organization_id=model.organization_id, revoked_at__isnull=True
        )[:50]
        if not k.model_codes.all() or any(m.id == model.id for m in k.model_codes.all())
    ]
    days = usage.by_day(
        user=portal.user,
        organization_id=model.organization_id,
        days=14,
        filters={"model_code": model.name},
    )
    return {
        "portal": portal,
        "model": model,
        "instances": instances,
        "live": [i for i in instances if i.status != InstanceStatus.TERMINATED],
        "ready": sum(1 for i in instances if i.status == InstanceStatus.READY),
        "decisions": decisions,
        "events": list(model.events.order_by("-id")[:10]),
        "key": keys[0] if keys else None,
        "base_url": request.build_absolute_uri("/v1"),
        "series": usage.chart_series(days),
        "week": sum((t.tokens for _, t in days[-7:]), 0),
        "can_deploy": portal.can(Capability.DEPLOYMENTS_MANAGE),
        "replicas_form": ReplicasForm(initial={"replicas": model.desired_replicas}),
    }


@portal_view
def model_page(request: HttpRequest, portal: Portal, model_code_id: int) -> HttpResponse:
    model = portal.mine(model_get_for_user(user=portal.user, model_code_id=model_code_id))
    context = _model_context(portal, model, request)
    if request.headers.get("HX-Request"):
        return render(request, "portal/_model_live.html", context)
    return render(request, "portal/model.html", context)


def _act(request: HttpRequest, portal: Portal, model_code_id: int, action: str) -> HttpResponse:
    model = portal.mine(model_get_for_user(user=portal.user, model_code_id=model_code_id))
    try:
        portal.require(Capability.DEPLOYMENTS_MANAGE)
        if action == "replicas":
            form = ReplicasForm(request.POST)
            if not form.is_valid():
                words = " ".join(str(e) for e in form.errors["replicas"])
                messages.error(request, f"Replicas: {words}")
                return redirect("portal:model", model_code_id=model.id)
            replicas = form.cleaned_data["replicas"]
            if model.status == "draft":
                services.model_deploy(model=model, replicas=replicas, by=portal.user.email)
            else:
                services.model_set_replicas(model=model, replicas=replicas)
            messages.success(request, f"{model.name}: {replicas} replica(s) wanted.")
        elif action == "deploy":
            services.model_deploy(model=model, by=portal.user.email)
            messages.success(request, f"{model.name} is deploying.")
        elif action == "pause":
            services.model_set_replicas(model=model, replicas=0)
            messages.success(
                request, f"{model.name} paused: no replica runs (and none is billed) until scaled."
            )
        elif action == "decommission":
            services.model_decommission(model=model, by=portal.user.email)
            messages.success(request, f"{model.name} is being decommissioned.")
    except ApplicationError as exc:
        flash_error(request, exc)
    return redirect("portal:model", model_code_id=model.id)


@require_POST
@portal_view
def model_action(
    request: HttpRequest, portal: Portal, model_code_id: int, action: str
) -> HttpResponse:
    return _act(request, portal, model_code_id, action)

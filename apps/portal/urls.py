from django.templatetags.static import static
from django.urls import path
from django.views.generic import RedirectView

from apps.portal import views_ops
from apps.portal.views import dashboard, instances, keys, models, org, playground, usage

app_name = "portal"

urlpatterns = [
    path("", dashboard.dashboard, name="dashboard"),
    # Browsers ask for it on every page (allauth's and the admin's too).
    path("favicon.ico", RedirectView.as_view(url=static("portal/favicon.svg")), name="favicon"),
    path("models/new/", models.wizard, name="wizard"),
    path("models/new/offers/", models.wizard_offers, name="wizard-offers"),
    path("models/<int:model_code_id>/", models.model_page, name="model"),
    path(
        "models/<int:model_code_id>/<str:action>/",
        models.model_action,
        name="model-action",
    ),
    path("instances/<uuid:instance_id>/", instances.instance_page, name="instance"),
    path("keys/", keys.keys, name="keys"),
    path("keys/<int:key_id>/revoke/", keys.key_revoke, name="key-revoke"),
    path("keys/<int:key_id>/rotate/", keys.key_rotate, name="key-rotate"),
    path("keys/<int:key_id>/limits/", keys.key_limits, name="key-limits"),
    path("usage/", usage.usage_page, name="usage"),
    path("usage/budgets/", usage.budgets, name="budgets"),
    path("usage/budgets/<int:budget_id>/delete/", usage.budget_remove, name="budget-delete"),
    path("playground/", playground.playground, name="playground"),
    path("organization/", org.organization, name="organization"),
    path("organization/invite/", org.invite, name="invite"),
    path(
        "organization/invitations/<int:invitation_id>/revoke/",
        org.invitation_revoke,
        name="invitation-revoke",
    ),
    path("organization/members/<int:user_id>/role/", org.member_role, name="member-role"),
    path("organization/members/<int:user_id>/remove/", org.member_remove, name="member-remove"),
    path("organization/switch/", org.switch, name="switch"),
    path("organization/new/", org.create, name="organization-create"),
    path("invitations/accept/", org.accept, name="accept"),
    path("ops/fleet/", views_ops.fleet, name="ops-fleet"),
]

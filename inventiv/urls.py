from django.contrib import admin
from django.urls import include, path
from drf_spectacular.views import SpectacularAPIView, SpectacularSwaggerSplitView

from inventiv import health, metrics_web

# Under /api/ and /internal/, Django's own 400/403/404/500 answer in the error envelope.
handler400 = "inventiv.errors.handler400"
handler403 = "inventiv.errors.handler403"
handler404 = "inventiv.errors.handler404"
handler500 = "inventiv.errors.handler500"

api_v1 = [
    path("", include("apps.accounts.api.urls")),
    path("", include("apps.models.api.urls")),
    path("", include("apps.instances.api.urls")),
    path("", include("apps.gateway.api.urls")),
    path("", include("apps.billing.api.urls")),
]

urlpatterns = [
    path("healthz", health.healthz, name="healthz"),
    path("readyz", health.readyz, name="readyz"),
    path("metrics", metrics_web.metrics_view, name="metrics"),
    path("admin/", admin.site.urls),
    path("accounts/", include("allauth.urls")),
    path("api/v1/", include(api_v1)),
    path("api/schema/", SpectacularAPIView.as_view(), name="api-schema"),
    # The split view serves its init script as a file (?script): no inline script, for the CSP.
    path("api/docs/", SpectacularSwaggerSplitView.as_view(url_name="api-schema"), name="api-docs"),
    path("internal/agent/v1/", include("apps.instances.agents.api.urls")),
    # The customer portal (docs/portal.md): the dashboard at /, its pages below.
    path("", include("apps.portal.urls")),
]

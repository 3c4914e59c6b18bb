from django.urls import path
from rest_framework.routers import SimpleRouter

from apps.models.api.hub_token import HubTokenView
from apps.models.api.quota import ScalingQuotaView
from apps.models.api.views import ModelCodeViewSet

router = SimpleRouter()
router.register("model-codes", ModelCodeViewSet, basename="model-code")
urlpatterns = [
    *router.urls,
    path(
        "organizations/<slug:slug>/hugging-face-token/",
        HubTokenView.as_view(),
        name="hub-token",
    ),
    path(
        "organizations/<slug:slug>/scaling-quota/",
        ScalingQuotaView.as_view(),
        name="organization-scaling-quota",
    ),
]

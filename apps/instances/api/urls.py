from django.urls import path
from rest_framework.routers import SimpleRouter

from apps.instances.api.offers import ModelOffersView
from apps.instances.api.ops import PingView
from apps.instances.api.views import ClusterStatusView, InstanceViewSet

router = SimpleRouter()
router.register("instances", InstanceViewSet, basename="instance")

urlpatterns = [
    path("ops/ping/", PingView.as_view(), name="ops-ping"),
    path("admin/status/", ClusterStatusView.as_view(), name="cluster-status"),
    path("models/<int:model_code_id>/offers/", ModelOffersView.as_view(), name="model-offers"),
    *router.urls,
]

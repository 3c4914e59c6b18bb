from django.urls import URLPattern, path

from apps.instances.api.ops import PingView

urlpatterns: list[URLPattern] = [path("ops/ping/", PingView.as_view(), name="ops-ping")]

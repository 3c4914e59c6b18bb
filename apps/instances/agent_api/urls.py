from django.urls import URLPattern, path

from apps.instances.agent_api import views

urlpatterns: list[URLPattern] = [
    path("register", views.register, name="agent-register"),
    path("heartbeat", views.heartbeat, name="agent-heartbeat"),
]

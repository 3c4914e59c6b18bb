from django.urls import URLPattern, path

from apps.instances.agents.api import hosts, views

urlpatterns: list[URLPattern] = [
    path("register", views.register, name="agent-register"),
    path("heartbeat", views.heartbeat, name="agent-heartbeat"),
    path("dist/<str:filename>", views.agent_wheel, name="agent-wheel"),
    path("hosts/join", hosts.join, name="agent-host-join"),
    path("hosts/poll", hosts.poll, name="agent-host-poll"),
]

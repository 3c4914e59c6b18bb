from django.apps import AppConfig

from apps.instances.agents import checks  # noqa: F401  (importing it registers the deploy checks)
from inventiv import checks as project_checks  # noqa: F401  (the project's deploy checks)


class InstancesConfig(AppConfig):
    name = "apps.instances"
    label = "instances"

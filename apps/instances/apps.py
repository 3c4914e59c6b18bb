from django.apps import AppConfig


class InstancesConfig(AppConfig):
    name = "apps.instances"
    label = "instances"

    def ready(self) -> None:
        from apps.instances.agents import checks  # noqa: F401  (registers the deployment checks)

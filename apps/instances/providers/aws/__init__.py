"""AWS EC2 GPU instances: the ProviderAdapter in ``adapter``."""

from apps.instances.providers.aws.adapter import AwsAdapter

__all__ = ["AwsAdapter"]

"""AWS EC2 GPU instances: ``adapter`` (the ProviderAdapter), ``transport`` (boto3 clients with
timeouts and retries, the call and paging wrappers), ``errors`` (EC2 error codes mapped to our
typed errors) and ``pricing`` (hourly prices)."""

from apps.instances.providers.aws.adapter import AwsAdapter

__all__ = ["AwsAdapter"]

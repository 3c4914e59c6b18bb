"""EC2's error codes mapped to our typed ``ProviderError``s; the tables say which codes mean
no capacity, quota, bad credentials, gone, or try again (transient)."""

from __future__ import annotations

from botocore.exceptions import BotoCoreError, ClientError

from apps.instances.providers.base import (
    AuthenticationFailed,
    MachineNotFound,
    OutOfCapacity,
    ProviderError,
    QuotaExceeded,
    TransientProviderError,
)

CAPACITY_ERRORS = {
    "InsufficientInstanceCapacity",
    "InsufficientHostCapacity",
    "InsufficientReservedInstanceCapacity",
    "InsufficientCapacity",
    "Unsupported",  # the type is not offered in this zone
    "SpotMaxPriceTooLow",
    "InsufficientFreeAddressesInSubnet",
}
QUOTA_ERRORS = {
    "VcpuLimitExceeded",
    "InstanceLimitExceeded",
    "MaxSpotInstanceCountExceeded",
    "VolumeLimitExceeded",
    "AddressLimitExceeded",
}
AUTH_ERRORS = {
    "AuthFailure",
    "UnauthorizedOperation",
    "InvalidClientTokenId",
    "SignatureDoesNotMatch",
    "ExpiredToken",
    "AccessDenied",
    "AccessDeniedException",
    "OptInRequired",
}
TRANSIENT_ERRORS = {
    "RequestLimitExceeded",
    "Throttling",
    "ThrottlingException",
    "InternalError",
    "ServiceUnavailable",
    "Unavailable",
    "IncorrectState",
}
NOT_FOUND_ERRORS = {"InvalidInstanceID.NotFound", "InvalidVolume.NotFound"}


def error_from(exc: ClientError | BotoCoreError) -> ProviderError:
    """Map an EC2 error code (``exc.response["Error"]["Code"]``) to our typed errors through
    the tables above; botocore's own errors (connection, timeout) are transient."""
    if isinstance(exc, BotoCoreError):
        return TransientProviderError(f"AWS unreachable ({type(exc).__name__})")
    code = str(exc.response.get("Error", {}).get("Code", ""))
    message = str(exc.response.get("Error", {}).get("Message", ""))[:300]
    detail = f"AWS {code}: {message}"
    if code in CAPACITY_ERRORS:
        return OutOfCapacity(detail)
    if code in QUOTA_ERRORS:
        return QuotaExceeded(detail)
    if code in AUTH_ERRORS:
        return AuthenticationFailed(detail)
    if code in NOT_FOUND_ERRORS:
        return MachineNotFound(detail)
    if code in TRANSIENT_ERRORS or code.endswith(".Unavailable"):
        return TransientProviderError(detail)
    return ProviderError(detail)

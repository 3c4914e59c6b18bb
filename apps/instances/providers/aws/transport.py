"""boto3, made safe to call from a worker: one session and one client per service and region
for each adapter, a connect and read timeout on every call (``INVENTIV_PROVIDER_CALL_TIMEOUT_S``),
botocore's standard retries (3 attempts), and every SDK error raised as our typed error
(``call``, ``pages``)."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import boto3
from botocore.config import Config
from botocore.exceptions import BotoCoreError, ClientError

from apps.instances.providers.aws.errors import error_from
from apps.instances.providers.base import ProviderError
from apps.instances.providers.common import call_timeout
from apps.instances.providers.credentials import credentials_for


class AwsClients:
    """The boto3 clients of one provider, created on first use and kept. Credentials:
    ``access_key_id`` / ``secret_access_key`` (/ ``session_token``), or none for the worker's
    own role."""

    def __init__(self, provider: Any, *, region: str) -> None:
        self.provider = provider
        self.region = region
        self._session: boto3.session.Session | None = None
        self._clients: dict[str, Any] = {}

    def client(self, service: str, region: str | None = None) -> Any:
        key = f"{service}:{region or self.region}"
        if key not in self._clients:
            if not self.region:
                raise ProviderError("The AWS provider needs a 'region' in its settings.")
            if self._session is None:
                creds = credentials_for(self.provider)
                self._session = boto3.session.Session(
                    aws_access_key_id=creds.get("access_key_id") or None,
                    aws_secret_access_key=creds.get("secret_access_key") or None,
                    aws_session_token=creds.get("session_token") or None,
                    region_name=self.region,
                )
            timeout = call_timeout()
            self._clients[key] = self._session.client(
                service,  # type: ignore[call-overload]
                region_name=region or self.region,
                config=Config(
                    connect_timeout=timeout,
                    read_timeout=timeout,
                    retries={"max_attempts": 3, "mode": "standard"},
                ),
            )
        return self._clients[key]


def call(fn: Any, /, **kwargs: Any) -> Any:
    """``fn(**kwargs)`` with an AWS error raised as our typed error (``error_from``)."""
    try:
        return fn(**kwargs)
    except (ClientError, BotoCoreError) as exc:
        raise error_from(exc) from None


def pages(client: Any, operation: str, **kwargs: Any) -> Iterator[Any]:
    """Every page of a paginated operation, errors raised as our typed errors."""
    try:
        yield from client.get_paginator(operation).paginate(**kwargs)
    except (ClientError, BotoCoreError) as exc:
        raise error_from(exc) from None

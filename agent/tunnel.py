"""The agent's side of the tunnel for machines that cannot be dialed (issue 12, hosts behind NAT).

When the desired state lists gateway URLs (``Desired.tunnel``), the agent keeps one outbound
WebSocket to each of them (``{url}/internal/agent/v1/tunnel``), authenticated with its instance
credential; each stream a gateway opens on it becomes a connection to the engine on loopback
(``agent.tunnel_mux``). The engine still checks its own secret: the gateway sends it in every
request as it does direct.

Guarantees:

* one tunnel per listed URL, re-dialled after any failure with a capped, jittered backoff
  (:data:`BACKOFF_INITIAL_S` doubling to :data:`BACKOFF_MAX_S`); a refused handshake (401/403:
  a credential the gateway no longer accepts) waits :data:`BACKOFF_MAX_S`;
* a URL that leaves the list is closed, with every stream on it (the engine sees those
  clients leave);
* the credential travels only in the ``Authorization`` header of the handshake; it is never
  logged. A cleartext gateway URL (``http://``, ``ws://``) is refused unless its host is
  loopback or the agent's environment opts in (:data:`ALLOW_CLEARTEXT_ENV` ``=1``, a trusted
  network): over it the long-lived credential would travel unencrypted. WebSocket pings
  (every :data:`PING_INTERVAL_S`) detect a dead path.
"""

from __future__ import annotations

import asyncio
import contextlib
import ipaddress
import logging
import os
import random
from urllib.parse import urlsplit

from websockets.asyncio.client import connect
from websockets.exceptions import InvalidStatus

from agent.tunnel_mux import (
    CHUNK_BYTES,
    HEADER,
    TUNNEL_PATH,
    TUNNEL_VERSION,
    VERSION_HEADER,
    Connection,
    Mux,
)

log = logging.getLogger(__name__)

BACKOFF_INITIAL_S = 0.25
BACKOFF_MAX_S = 10.0
PING_INTERVAL_S = 15.0
ENGINE_CONNECT_TIMEOUT_S = 5.0


# Passed to instance agents by the host agent (agent.environment: the INVENTIV_AGENT_ prefix).
ALLOW_CLEARTEXT_ENV = "INVENTIV_AGENT_ALLOW_CLEARTEXT_TUNNEL"


def _loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def cleartext_refusal(url: str) -> str | None:
    """Why the agent will not dial ``url`` (a tunnel's WebSocket URL), or None."""
    parts = urlsplit(url)
    if parts.scheme == "wss" or _loopback(parts.hostname or ""):
        return None
    if os.environ.get(ALLOW_CLEARTEXT_ENV) == "1":
        return None
    return (
        f"refusing the cleartext gateway URL {url!r}: the instance credential would travel "
        f"unencrypted; use an https:// gateway URL (or set {ALLOW_CLEARTEXT_ENV}=1 on a "
        "trusted network)"
    )


def tunnel_url(base: str) -> str:
    """``http(s)://gateway:port`` (or ``ws(s)://``) → the tunnel's WebSocket URL."""
    base = base.rstrip("/")
    if base.startswith("http://"):
        base = "ws://" + base[len("http://") :]
    elif base.startswith("https://"):
        base = "wss://" + base[len("https://") :]
    return base + TUNNEL_PATH


class TunnelClient:
    """One tunnel to one gateway process, kept open until :meth:`stop`."""

    def __init__(self, url: str, *, credential: str, instance_id: str, engine_port: int) -> None:
        self.url = tunnel_url(url)
        refusal = cleartext_refusal(self.url)
        if refusal is not None:
            raise ValueError(refusal)
        self.credential = credential
        self.instance_id = instance_id
        self.engine_port = engine_port
        self.connected = asyncio.Event()
        self._task: asyncio.Task[None] | None = None

    def start(self) -> None:
        self._task = asyncio.ensure_future(self._run())

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(BaseException):
                await self._task

    async def _open_engine(self) -> Connection | None:
        return await asyncio.wait_for(
            asyncio.open_connection("127.0.0.1", self.engine_port), ENGINE_CONNECT_TIMEOUT_S
        )

    async def _run(self) -> None:
        backoff = BACKOFF_INITIAL_S
        while True:
            try:
                await self._serve()
                backoff = BACKOFF_INITIAL_S  # it was up: the next failure starts over
            except InvalidStatus as exc:
                status = exc.response.status_code
                log.error("tunnel to %s refused (HTTP %s)", self.url, status)
                if status in (401, 403):
                    backoff = BACKOFF_MAX_S
            except (OSError, TimeoutError) as exc:
                log.warning("tunnel to %s failed (%s)", self.url, type(exc).__name__)
            except Exception as exc:  # a protocol error, a closed connection: dial again
                log.warning("tunnel to %s ended (%s: %s)", self.url, type(exc).__name__, exc)
            self.connected.clear()
            await asyncio.sleep(backoff * random.uniform(0.8, 1.2))
            backoff = min(backoff * 2, BACKOFF_MAX_S)

    async def _serve(self) -> None:
        headers = {
            "Authorization": f"Bearer {self.credential}",
            "X-Inventiv-Instance": self.instance_id,
            VERSION_HEADER: str(TUNNEL_VERSION),
        }
        async with connect(
            self.url,
            additional_headers=headers,
            compression=None,  # engine traffic: JSON and SSE, small frames, latency first
            max_size=CHUNK_BYTES + HEADER.size + 64,
            ping_interval=PING_INTERVAL_S,
            ping_timeout=PING_INTERVAL_S,
            proxy=None,
            open_timeout=10,
        ) as ws:
            mux = Mux(ws.send, opener=self._open_engine)
            log.info("tunnel to %s open", self.url)
            self.connected.set()
            try:
                async for message in ws:
                    if isinstance(message, bytes):
                        mux.feed(message)
            finally:
                mux.close()
                log.info("tunnel to %s closed", self.url)


class TunnelManager:
    """The tunnels the desired state asks for: :meth:`update` with each answer's list."""

    def __init__(self) -> None:
        self.clients: dict[str, TunnelClient] = {}
        self._key: tuple[str, str, int] | None = None
        self.refused: set[str] = set()  # cleartext URLs not dialled (logged once each)

    async def update(
        self, urls: list[str], *, credential: str, instance_id: str, engine_port: int
    ) -> None:
        key = (credential, instance_id, engine_port)
        if key != self._key:  # another credential or engine port: dial everything again
            await self.close()
            self._key = key
        wanted = set(urls)
        for url in [u for u in self.clients if u not in wanted]:
            await self.clients.pop(url).stop()
        for url in urls:
            if url not in self.clients:
                try:
                    client = TunnelClient(
                        url, credential=credential, instance_id=instance_id, engine_port=engine_port
                    )
                except ValueError as exc:
                    if url not in self.refused:
                        self.refused.add(url)
                        log.error("%s", exc)
                    continue
                client.start()
                self.clients[url] = client

    async def close(self) -> None:
        clients, self.clients = list(self.clients.values()), {}
        for client in clients:
            await client.stop()

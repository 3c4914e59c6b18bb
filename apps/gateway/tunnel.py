"""The gateway's side of the tunnel to machines that cannot be dialed (issue 12, hosts behind NAT).

An agent whose host is served through the tunnel (``OnPremHost.uses_tunnel``) keeps a WebSocket
open to every gateway process listed in ``INVENTIV_TUNNEL_GATEWAY_URLS``, at
``/internal/agent/v1/tunnel`` (``agent.tunnel``). This process accepts it when the agent's
instance credential is valid for a live instance (``apps.gateway.tunnel_auth``: the same keyed
hash and constant-time compare as the agent API), and then holds it for that instance.

The proxy is not changed: each tunneled instance has a listener on 127.0.0.1 in this process
(one port per instance, closed when the instance leaves the routing table and no tunnel of it is
open here: :meth:`TunnelRegistry.release`) and its routing entry points there
(``routing.InstanceState``). Each connection the pooled upstream client opens to it is carried
as a stream of the instance's newest tunnel (``agent.tunnel_mux``), so keep-alive, streaming,
failover before the first byte, usage and cancellation (the client leaves → the gateway closes
its engine connection → the stream closes → the agent closes the engine's connection) work as
direct. A tunneled instance without a tunnel into this process is not chosen here
(:meth:`TunnelRegistry.connected`); a tunnel that drops breaks its streams, which the proxy
sees as an engine connection that failed.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import socket
from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING

from agent.tunnel_mux import TUNNEL_PATH, TUNNEL_VERSION, Mux

if TYPE_CHECKING:  # routing imports this module, and request imports routing
    from apps.gateway.request import Receive, Scope, Send

__all__ = ["TUNNELS", "TUNNEL_PATH", "TunnelRegistry"]

logger = logging.getLogger("apps.gateway")
_LISTEN_BACKLOG = 1024
# WebSocket close codes (4000-4999: the application's); before the accept they answer 403.
_CLOSE_UNAUTHORIZED = 4401
_CLOSE_BAD_VERSION = 4400


class _Endpoint:
    """One instance's local listener: connections to it are carried by its newest tunnel."""

    def __init__(self, instance_id: str) -> None:
        self.instance_id = instance_id
        self.sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        self.sock.bind(("127.0.0.1", 0))
        self.sock.listen(_LISTEN_BACKLOG)
        self.sock.setblocking(False)
        self.url = f"http://127.0.0.1:{self.sock.getsockname()[1]}"
        self.server: asyncio.Server | None = None
        self.muxes: list[Mux] = []
        self.routed = False  # the routing table points at it (``url_for``, until ``release``)
        self.closed = False

    async def start(self) -> None:
        if self.server is None and not self.closed:
            self.server = await asyncio.start_server(self._handle, sock=self.sock)

    def close(self) -> None:
        """Stop listening and free the port (no tunnel is open: no stream is carried)."""
        self.closed = True
        if self.server is not None:
            self.server.close()
        self.sock.close()

    def start_soon(self) -> None:
        with contextlib.suppress(RuntimeError):  # no running loop: started at the first tunnel
            asyncio.get_running_loop().create_task(self.start())

    def live(self) -> Mux | None:
        for mux in reversed(self.muxes):
            if not mux.closed:
                return mux
        return None

    async def _handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        mux = self.live()
        if mux is None:
            writer.close()  # the proxy sees a failed engine connection and fails over
            return
        # Cancelled when its tunnel closes: the connection is closed, nothing to report (the
        # server's callback would log a cancelled handler as an error).
        with contextlib.suppress(asyncio.CancelledError):
            await mux.carry(reader, writer)


class TunnelRegistry:
    """The tunnels held by this gateway process, by instance id. One per process (``TUNNELS``);
    everything runs on the event loop."""

    def __init__(self) -> None:
        self._endpoints: dict[str, _Endpoint] = {}

    def _endpoint(self, instance_id: str) -> _Endpoint:
        endpoint = self._endpoints.get(instance_id)
        if endpoint is None:
            endpoint = self._endpoints[instance_id] = _Endpoint(instance_id)
            endpoint.start_soon()
        return endpoint

    def url_for(self, instance_id: str) -> str:
        """The base URL the proxy uses for a tunneled instance (its local listener)."""
        endpoint = self._endpoint(instance_id)
        endpoint.routed = True
        return endpoint.url

    def release(self, instance_id: str) -> None:
        """The instance left the routing table: its listener is closed now if no tunnel of it
        is open here, else when its last tunnel closes (unless it is routed again meanwhile)."""
        endpoint = self._endpoints.get(instance_id)
        if endpoint is not None:
            endpoint.routed = False
            self._prune(endpoint)

    def _prune(self, endpoint: _Endpoint) -> None:
        if endpoint.routed or endpoint.muxes:
            return
        if self._endpoints.get(endpoint.instance_id) is endpoint:
            del self._endpoints[endpoint.instance_id]
        endpoint.close()

    def connected(self, instance_id: str) -> bool:
        endpoint = self._endpoints.get(instance_id)
        return endpoint is not None and endpoint.live() is not None

    def streams(self, instance_id: str) -> int:
        endpoint = self._endpoints.get(instance_id)
        mux = endpoint.live() if endpoint is not None else None
        return mux.streams if mux is not None else 0

    async def serve(
        self,
        scope: Scope,
        receive: Receive,
        send: Send,
        authenticate: Callable[[str], Awaitable[str | None]],
    ) -> None:
        """The ASGI WebSocket of one agent's tunnel, until it closes. ``authenticate`` maps
        an agent credential to the instance it may hold a tunnel for (None: refused)."""
        if (await receive())["type"] != "websocket.connect":
            return
        headers: dict[bytes, bytes] = dict(scope["headers"])
        if headers.get(b"x-inventiv-tunnel-version", b"") != str(TUNNEL_VERSION).encode():
            await send({"type": "websocket.close", "code": _CLOSE_BAD_VERSION})
            return
        scheme, _, token = headers.get(b"authorization", b"").partition(b" ")
        instance_id = None
        if scheme.lower() == b"bearer" and token.strip():
            instance_id = await authenticate(token.strip().decode("latin-1"))
        if instance_id is None:
            await send({"type": "websocket.close", "code": _CLOSE_UNAUTHORIZED})
            return
        await send({"type": "websocket.accept"})
        endpoint = self._endpoint(instance_id)
        await endpoint.start()

        async def send_frame(data: bytes) -> None:
            await send({"type": "websocket.send", "bytes": data})

        mux = Mux(send_frame)
        endpoint.muxes.append(mux)
        logger.info("tunnel of instance %s open", instance_id)
        try:
            while True:
                message = await receive()
                if message["type"] == "websocket.receive":
                    data = message.get("bytes")
                    if data:
                        mux.feed(data)
                elif message["type"] == "websocket.disconnect":
                    break
        finally:
            mux.close()  # its streams end with it
            endpoint.muxes.remove(mux)
            self._prune(endpoint)
            logger.info("tunnel of instance %s closed", instance_id)


TUNNELS = TunnelRegistry()

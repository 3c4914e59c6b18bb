"""A tunneled instance's local listener in the gateway (``apps.gateway.tunnel``) lives only as
long as the routing table points at it or one of its tunnels is open: routed instances that go
away leave no listening socket behind."""

from __future__ import annotations

import asyncio
import dataclasses

import pytest

from agent.tunnel import TunnelClient
from apps.gateway.routing import RoutingTable
from apps.gateway.tunnel import TUNNELS
from apps.gateway.types import InstanceSnapshot, ModelSnapshot
from tests.tunnel.test_mux import CREDENTIAL, Engine, TunnelRegistry, gateway, until


async def _refused(url: str) -> bool:
    host, port = url.removeprefix("http://").split(":")
    try:
        _, writer = await asyncio.open_connection(host, int(port))
    except ConnectionRefusedError:
        return True
    writer.close()
    return False


def _model(*instance_ids: str) -> ModelSnapshot:
    instances = tuple(
        InstanceSnapshot(id=i, endpoint="http://10.0.0.1:1", secret="s", tunnel=True)
        for i in instance_ids
    )
    return ModelSnapshot(1, 1, "org", "bot", "least_outstanding", 0, instances)


@pytest.mark.parametrize("how", ["remove_instance", "full reload"])
async def test_an_instance_that_leaves_the_routing_table_leaves_no_listener(how: str) -> None:
    table = RoutingTable(breaker_failures=2, breaker_cooldown_s=60, load_factor=1.25)
    model = _model("tun-a", "tun-b")
    table.replace([model])
    route = table.get(1, "bot")
    assert route is not None
    urls = {s.id: s.url_base for s in route.instances}
    await asyncio.sleep(0.05)  # the listeners start on the loop
    assert not await _refused(urls["tun-a"])
    # when tun-a is no longer routed
    if how == "remove_instance":
        assert table.remove_instance(1, "tun-a")
    else:
        table.replace([dataclasses.replace(model, instances=model.instances[1:])])
    # then its port refuses connections and the registry forgets it; tun-b is untouched
    assert await _refused(urls["tun-a"])
    assert "tun-a" not in TUNNELS._endpoints
    assert not await _refused(urls["tun-b"])
    table.replace([])
    assert await _refused(urls["tun-b"])
    assert not any(i.startswith("tun-") for i in TUNNELS._endpoints)


async def test_a_listener_released_while_its_tunnel_is_open_closes_with_the_tunnel() -> None:
    engine = Engine()
    await engine.start()
    registry = TunnelRegistry()
    async with gateway(registry) as url:
        client = TunnelClient(
            url, credential=CREDENTIAL, instance_id="inst-1", engine_port=engine.port
        )
        client.start()
        base = registry.url_for("inst-1")
        await until(lambda: registry.connected("inst-1"))
        registry.release("inst-1")
        # the tunnel is open: the listener still carries connections
        host, port = base.removeprefix("http://").split(":")
        reader, writer = await asyncio.open_connection(host, int(port))
        writer.write(b"stream 1\n")
        assert await asyncio.wait_for(reader.readline(), 3) == b"line 0\n"
        writer.close()
        # when the tunnel closes, the listener goes with it
        await client.stop()
        await until(lambda: "inst-1" not in registry._endpoints)
        assert await _refused(base)
    assert engine.server is not None
    engine.server.close()

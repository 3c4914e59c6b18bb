"""A fleet larger than the web worker's --limit-concurrency is never refused for idle
connections: the agent's control-plane client keeps none open between its beats (issue 19).

uvicorn counts every open connection, idle keep-alive ones included, against
--limit-concurrency and answers 503 past it. A client that kept its connection between beats
(the heartbeat interval 5 s, compose's --timeout-keep-alive 5 s) would hold one per agent."""

from __future__ import annotations

import asyncio
from pathlib import Path

from agent.control_plane import ControlPlaneClient, ControlPlaneError
from agent.protocol import AgentState, Heartbeat
from apps.models.models import LlmModel
from tests.fleet.test_heartbeat_at_scale import ENGINE, _serving
from tests.processes import PYTHON, ProcessGroup, free_port

LIMIT = 4
AGENTS = 3 * LIMIT
INTERVAL_S = 1.5  # each agent's beats this far apart, the agents spread evenly over it
ROUNDS = 2


def test_more_agents_than_the_limit_beat_without_a_503(
    tmp_path: Path, processes: ProcessGroup, mock_model: LlmModel
) -> None:
    # Given a web worker as compose runs it, but with room for 4 connections, and 12 agents
    fleet = [_serving(mock_model) for _ in range(AGENTS)]
    port = free_port()
    base = f"http://127.0.0.1:{port}"
    web = processes.start(
        "web",
        [PYTHON, "-m", "uvicorn", "inventiv.asgi:application", "--host", "127.0.0.1",
         "--port", str(port), "--lifespan", "off", "--http", "apps.gateway.server:HttpProtocol",
         "--timeout-keep-alive", "5", "--limit-concurrency", str(LIMIT),
         "--log-level", "warning"],
        INVENTIV_PUBLIC_URL=base,
    )  # fmt: skip
    processes.wait_http(web, base + "/healthz", timeout=60)

    clients = [ControlPlaneClient(base) for _ in range(AGENTS)]

    async def beat(index: int) -> int | str:
        instance, credential = fleet[index]
        message = Heartbeat(instance_id=str(instance.id), state=AgentState.READY, engine=ENGINE)
        try:
            answer = await clients[index].heartbeat(credential, message)
        except ControlPlaneError as exc:
            return exc.status or str(exc)
        return 200 if answer.desired else "no desired state"

    async def agent_beats(index: int) -> list[int | str]:
        await asyncio.sleep(index * INTERVAL_S / AGENTS)
        outcomes = []
        for _ in range(ROUNDS):
            outcomes.append(await beat(index))
            await asyncio.sleep(INTERVAL_S)
        return outcomes

    async def fleet_beats() -> list[list[int | str]]:
        try:
            # Each agent's first beat (the full path, slower) one after the other, so that only
            # idle connections can pass the limit, not beats in flight
            first = [await beat(i) for i in range(AGENTS)]
            steady = await asyncio.gather(*(agent_beats(i) for i in range(AGENTS)))
            return [[f, *rest] for f, rest in zip(first, steady, strict=True)]
        finally:
            for client in clients:
                await client.aclose()

    # When the 12 agents beat with their real control-plane clients: a first beat each, then
    # two more each, spaced by the interval
    outcomes = asyncio.run(fleet_beats())

    # Then every beat of every agent was answered: none refused for the agents' idle connections
    assert outcomes == [[200] * (1 + ROUNDS)] * AGENTS, web.log()

"""A fleet larger than the web worker's --limit-concurrency is never refused for idle
connections: the agent's control-plane client keeps none open between its beats (issue 19).

uvicorn counts every open connection, idle keep-alive ones included, against
--limit-concurrency and answers 503 past it. A client that kept its connection between beats
(the heartbeat interval 5 s, compose's --timeout-keep-alive 5 s) would hold one per agent."""

from __future__ import annotations

import asyncio
from pathlib import Path

from agent.control_plane import ControlPlaneClient, ControlPlaneError
from apps.models.models import LlmModel
from tests.fleet.test_heartbeat_at_scale import _serving
from tests.processes import PYTHON, ProcessGroup, free_port

LIMIT = 4
AGENTS = 3 * LIMIT
INTERVAL_S = 1.2  # each agent's beats this far apart, the agents spread evenly over it
ROUNDS = 3


def test_more_agents_than_the_limit_beat_without_a_503(
    tmp_path: Path, processes: ProcessGroup, mock_model: LlmModel
) -> None:
    from agent.protocol import AgentState, Heartbeat

    from tests.fleet.test_heartbeat_at_scale import ENGINE

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

    async def agent_beats(index: int) -> list[int | str]:
        instance, credential = fleet[index]
        client = ControlPlaneClient(base)
        outcomes: list[int | str] = []
        try:
            await asyncio.sleep(index * INTERVAL_S / AGENTS)
            for _ in range(ROUNDS):
                beat = Heartbeat(
                    instance_id=str(instance.id), state=AgentState.READY, engine=ENGINE
                )
                try:
                    answer = await client.heartbeat(credential, beat)
                    outcomes.append(200 if answer.desired else "no desired state")
                except ControlPlaneError as exc:
                    outcomes.append(exc.status or str(exc))
                await asyncio.sleep(INTERVAL_S)
        finally:
            await client.aclose()
        return outcomes

    async def fleet_beats() -> list[list[int | str]]:
        return await asyncio.gather(*(agent_beats(i) for i in range(AGENTS)))

    # When each agent beats 3 times with its real control-plane client, spaced by the interval
    outcomes = asyncio.run(fleet_beats())

    # Then every beat of every agent was answered: none refused for the agents' idle connections
    assert outcomes == [[200] * ROUNDS] * AGENTS, web.log()

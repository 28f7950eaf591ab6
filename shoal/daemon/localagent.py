"""LocalAgent: this host's agent running over a session, the same on managers and workers.

ManagerRuntime connects it to the in-process dispatcher (a socket pair), WorkerRuntime to the
manager's cluster port (mutual TLS); both build, run and stop it through this one place.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Awaitable, Callable
from pathlib import Path

from shoal.agent.agent import Agent
from shoal.agent.exec.crun import CrunExecutor
from shoal.agent.network.host import HostNetwork
from shoal.api.clock import Clock
from shoal.api.services import LogSource
from shoal.api.types import NodeDescription

Streams = tuple[asyncio.StreamReader, asyncio.StreamWriter]


class LocalAgent:
    def __init__(self, *, executor: CrunExecutor, clock: Clock, state_dir: Path, node_id: str,
                 description: NodeDescription, logs: LogSource | None,
                 network: HostNetwork | None) -> None:
        self.agent = Agent(executor, node_id=node_id, state_dir=state_dir / "agent",
                           description=description, clock=clock, logs=logs,
                           on_network_state=network.submit if network else None)
        self._task: asyncio.Task[None] | None = None

    def start(self, connect: Callable[[], Awaitable[Streams]], name: str) -> None:
        """Keep a session up through `connect` (the agent reconnects by itself)."""
        self._task = asyncio.create_task(self.agent.run(connect), name=name)

    async def stop(self, *, shutdown_tasks: bool) -> None:
        await self.agent.stop(shutdown_tasks=shutdown_tasks)
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await self._task
            self._task = None

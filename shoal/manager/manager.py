"""The Manager: the leader's components, started in data-flow order and stopped in reverse.

Built by the daemon after `swarm init` (or at start when the store already holds a cluster). The
components never call each other; they talk only through the store (DESIGN.md §2):
    orchestrators -> allocator -> scheduler -> dispatcher
Starting upstream first means each component's start-up snapshot already holds what the one
before it wrote; stopping in reverse stops the agents' view (dispatcher) first so no new
assignment leaves while the rest winds down. The daemon hands agent connections to `serve_agent`
and gives the API server `log_source()` (task logs read over the agents' sessions).
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Sequence

from shoal.api.clock import Clock
from shoal.manager.allocator import Allocator
from shoal.manager.component import Component
from shoal.manager.dispatcher.dispatcher import Dispatcher
from shoal.manager.dispatcher.logs import ClusterLogSource
from shoal.manager.orchestrator.component import Orchestrator
from shoal.manager.scheduler.scheduler import Scheduler
from shoal.store.protocol import Store

log = logging.getLogger(__name__)


class Manager:
    """`orchestrators` replaces the default `[Orchestrator(store, clock)]` (tests run without one)."""

    def __init__(self, store: Store, clock: Clock, *, node_id: str,
                 orchestrators: Sequence[Component] | None = None) -> None:
        self.node_id = node_id
        if orchestrators is None:
            orchestrators = [Orchestrator(store, clock)]
        self.allocator = Allocator(store, clock)
        self.scheduler = Scheduler(store, clock)
        self.dispatcher = Dispatcher(store, clock)
        self._log_source = ClusterLogSource(store, self.dispatcher)
        self._components: list[Component] = [*orchestrators, self.allocator, self.scheduler,
                                             self.dispatcher]
        self._started: list[Component] = []

    async def start(self) -> None:
        """Start every component in order; if one fails, stop those already started and re-raise."""
        for component in self._components:
            try:
                await component.start()
            except BaseException:
                await self.stop()
                raise
            self._started.append(component)

    async def stop(self) -> None:
        """Stop what was started, in reverse order; one failing stop does not skip the others."""
        while self._started:
            component = self._started.pop()
            try:
                await component.stop()
            except Exception:
                log.exception("stopping %s failed", type(component).__name__)

    def log_source(self) -> ClusterLogSource:
        """The `api.services.LogSource` of the cluster: each task's lines, read on its node."""
        return self._log_source

    async def serve_agent(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        """One agent session (see Dispatcher.serve); returns when the session ends."""
        await self.dispatcher.serve(reader, writer)

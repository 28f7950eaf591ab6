"""A worker's runtime: its agent on a mutual-TLS session with a manager, and certificate renewal.

Started by daemon/cluster.py after `swarm join` (or at start when node.json says this host is a
worker) and stopped on `swarm leave` or shutdown. Each connection attempt reloads the node's
identity from disk, so a certificate the renewer replaced is used by the next session; the Agent
reconnects by itself (with backoff) whenever the session drops, and tries the known managers in
turn.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable
from pathlib import Path

from shoal.agent.exec.crun import CrunExecutor
from shoal.agent.identity import CertificateRenewer, JoinError, NodeIdentity, open_session
from shoal.agent.network.host import HostNetwork
from shoal.api.clock import Clock
from shoal.api.services import LogSource
from shoal.api.types import NodeDescription
from shoal.daemon.localagent import LocalAgent

log = logging.getLogger(__name__)

Streams = tuple[asyncio.StreamReader, asyncio.StreamWriter]


class WorkerRuntime:
    def __init__(self, *, executor: CrunExecutor, clock: Clock, state_dir: Path, identity_dir: Path,
                 description: Callable[[], NodeDescription], managers: list[str],
                 logs: LogSource | None = None,
                 network: HostNetwork | None = None) -> None:
        self._network = network
        self._executor = executor
        self._logs = logs
        self._clock = clock
        self._state_dir = state_dir
        self._identity_dir = identity_dir
        self._description = description
        self._managers = list(managers)
        self._next = 0
        self._agent: LocalAgent | None = None
        self._renewer: CertificateRenewer | None = None

    def manager_addr(self) -> str:
        return self._managers[self._next % len(self._managers)]

    def _identity(self) -> NodeIdentity:
        identity = NodeIdentity.load(self._identity_dir)
        if identity is None:
            raise ConnectionError(f"no usable node identity in {self._identity_dir}")
        return identity

    async def start(self) -> None:
        identity = self._identity()
        self._agent = LocalAgent(executor=self._executor, clock=self._clock, state_dir=self._state_dir,
                                 node_id=identity.node_id, description=self._description(),
                                 logs=self._logs, network=self._network)
        self._agent.start(self._connect, "worker-agent")
        self._renewer = CertificateRenewer(self._identity_dir, self.manager_addr, self._clock)
        await self._renewer.start()
        log.info("worker %s started; managers %s", identity.node_id, ", ".join(self._managers))

    async def _connect(self) -> Streams:
        addr = self.manager_addr()
        try:
            return await open_session(addr, self._identity())
        except JoinError as e:  # the Agent retries a ConnectionError quietly, with backoff
            self._next += 1  # the next attempt tries the next manager
            raise ConnectionError(str(e)) from None

    async def stop(self, *, shutdown_tasks: bool) -> None:
        if self._renewer is not None:
            await self._renewer.stop()
        if self._agent is not None:
            await self._agent.stop(shutdown_tasks=shutdown_tasks)
        self._agent = self._renewer = None

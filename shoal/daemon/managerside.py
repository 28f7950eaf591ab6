"""A manager's runtime: the Manager, the cluster port (mutual TLS) and the local agent.

Started by daemon/cluster.py after `swarm init` (or at start when the store holds a Cluster) and
stopped on `swarm leave --force` or shutdown. Remote agents reach the dispatcher through the
cluster port (shoal/manager/clusterport.py: joins, certificate renewal and sessions whose node
identity comes from the peer's certificate); the local agent reaches it through a socket pair
carrying the same frames, trusted without TLS since it never leaves the process.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import socket
from collections.abc import Callable
from pathlib import Path

from shoal.agent.exec.crun import CrunExecutor
from shoal.agent.network.host import HostNetwork
from shoal.api.clock import Clock
from shoal.api.services import LogSource
from shoal.api.types import NodeDescription
from shoal.daemon.localagent import LocalAgent
from shoal.manager.ca.authority import RootCA
from shoal.manager.clusterport import ClusterPortServer
from shoal.manager.manager import Manager
from shoal.store.protocol import Store

log = logging.getLogger(__name__)

Streams = tuple[asyncio.StreamReader, asyncio.StreamWriter]


class ManagerRuntime:
    def __init__(self, *, store: Store, executor: CrunExecutor, clock: Clock, state_dir: Path,
                 description: Callable[[], NodeDescription], logs: LogSource | None = None,
                 network: HostNetwork | None = None) -> None:
        self._network = network
        self._store = store
        self._logs = logs
        self._executor = executor
        self._clock = clock
        self._state_dir = state_dir
        self._description = description
        self.root: RootCA | None = None
        self._manager: Manager | None = None
        self._port: ClusterPortServer | None = None
        self._agent: LocalAgent | None = None
        self._sessions: set[asyncio.Task[None]] = set()

    def log_source(self) -> LogSource | None:
        return self._manager.log_source() if self._manager is not None else None

    @property
    def port(self) -> int | None:
        return self._port.port if self._port is not None else None

    async def start(self, *, node_id: str, cluster_id: str, root: RootCA, host: str, port: int) -> None:
        """Start the manager, then the cluster port on host:port, then the local agent. Stops
        what it started and re-raises when one of them fails (e.g. the port is taken)."""
        self.root = root
        self._manager = Manager(self._store, self._clock, node_id=node_id)
        await self._manager.start()
        try:
            self._port = ClusterPortServer(self._store, root, self._manager.dispatcher.serve, host=host,
                                           port=port, manager_node_id=node_id, cluster_id=cluster_id,
                                           clock=self._clock)
            await self._port.start()
        except BaseException:
            self._port = None
            await self.stop(shutdown_tasks=False)
            raise
        self._agent = LocalAgent(executor=self._executor, clock=self._clock, state_dir=self._state_dir,
                                 node_id=node_id, description=self._description(), logs=self._logs,
                                 network=self._network)
        self._agent.start(self._connect, "manager-agent")
        log.info("manager %s: cluster port listening on %s:%d", node_id, host, self._port.port)

    async def _connect(self) -> Streams:
        """A fresh dispatcher session: one end to the manager, the other returned to the agent."""
        manager = self._manager
        if manager is None:
            raise ConnectionError("the manager is not running")
        ours, theirs = socket.socketpair()
        m_reader, m_writer = await asyncio.open_connection(sock=theirs)
        session = asyncio.create_task(manager.serve_agent(m_reader, m_writer))
        self._sessions.add(session)
        session.add_done_callback(self._sessions.discard)
        return await asyncio.open_connection(sock=ours)

    async def stop(self, *, shutdown_tasks: bool) -> None:
        if self._agent is not None:
            await self._agent.stop(shutdown_tasks=shutdown_tasks)
        if self._port is not None:
            await self._port.stop()
        if self._manager is not None:
            await self._manager.stop()
        for session in list(self._sessions):
            session.cancel()
        for session in list(self._sessions):
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await session
        self._agent = self._manager = self._port = None
        self.root = None

"""ClusterControl: the daemon's SwarmControl (api/services.py) — joining, leaving, restarting.

The API server calls `init`/`leave`; shoal.daemon.main calls `resume()` at start (a store that
holds a Cluster means this node was in a swarm: start the manager and the agent again) and
`stop()` at shutdown. The agent reaches the manager's dispatcher through a socket pair carrying
the frames of api/protocol.py, exactly as it would over the network.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import socket
from collections.abc import Callable
from pathlib import Path
from typing import Any

import msgspec

from shoal.agent.agent import Agent
from shoal.agent.exec.crun import CrunExecutor
from shoal.api.clock import Clock
from shoal.api.defaults import initial_swarm_spec
from shoal.api.errors import ALREADY_IN_SWARM, LEAVE_LAST_MANAGER, Unavailable
from shoal.api.ids import new_id
from shoal.api.types import Cluster, NodeDescription, SwarmSpec
from shoal.manager.bootstrap import bootstrap_cluster
from shoal.manager.manager import Manager
from shoal.store.protocol import Store

log = logging.getLogger(__name__)

Streams = tuple[asyncio.StreamReader, asyncio.StreamWriter]


_ZERO: tuple[Any, ...] = (None, 0, "", {}, [])


def _overlay(base: Any, top: Any) -> Any:
    if isinstance(base, dict) and isinstance(top, dict):
        out = dict(base)
        for key, value in top.items():
            out[key] = _overlay(base.get(key), value)
        return out
    return base if any(top is z or top == z for z in _ZERO) and not isinstance(top, bool) else top


def merge_spec(base: SwarmSpec, overrides: dict[str, Any]) -> SwarmSpec:
    """The initial spec with every non-zero field of the request's Spec laid over it: the CLI
    sends a zero-filled spec for the flags the user did not set."""
    return msgspec.convert(_overlay(msgspec.to_builtins(base), overrides), SwarmSpec)


def advertised(advertise_addr: str, listen_addr: str) -> str:
    """The address this node advertises (host only; the cluster port is the manager's): the given
    address, else the listen address's host unless it is the wildcard, else loopback."""
    host = advertise_addr.strip()
    if host.count(":") == 1:  # "ip:port" -> ip
        host = host.rpartition(":")[0]
    if not host:
        listen_host = listen_addr.rpartition(":")[0].strip("[]")
        host = listen_host if listen_host not in ("", "0.0.0.0", "::") else "127.0.0.1"
    return host


class ClusterControl:
    def __init__(self, *, store: Store, executor: CrunExecutor, clock: Clock, state_dir: Path,
                 description: Callable[[], NodeDescription]) -> None:
        self._store = store
        self._executor = executor
        self._clock = clock
        self._state_dir = state_dir
        self._description = description
        self._node_file = state_dir / "node.json"
        self._lock = asyncio.Lock()
        self._node_id: str | None = self._read_node_id()
        self._manager: Manager | None = None
        self._agent: Agent | None = None
        self._agent_task: asyncio.Task[None] | None = None
        self._sessions: set[asyncio.Task[None]] = set()

    def _read_node_id(self) -> str | None:
        try:
            data = json.loads(self._node_file.read_text())
        except (OSError, ValueError):
            return None
        node_id = data.get("node_id") if isinstance(data, dict) else None
        return node_id if isinstance(node_id, str) else None

    def _in_swarm(self) -> bool:
        return any(True for _ in self._store.view().list(Cluster))

    def local_node_id(self) -> str | None:
        return self._node_id if self._in_swarm() else None

    async def resume(self) -> None:
        """At daemon start: a node that was in a swarm starts its manager and agent again."""
        async with self._lock:
            if self._in_swarm() and self._node_id:
                await self._start_components(self._node_id)

    async def init(self, advertise_addr: str, listen_addr: str, spec_overrides: dict[str, object]) -> str:
        async with self._lock:
            if self._in_swarm():
                raise Unavailable(ALREADY_IN_SWARM)
            node_id = self._node_id or new_id()
            spec = merge_spec(initial_swarm_spec(), dict(spec_overrides))
            await self._executor.setup()
            await bootstrap_cluster(self._store, node_id=node_id, description=self._description(),
                                    addr=advertised(advertise_addr, listen_addr), spec=spec,
                                    now=self._clock.now())
            self._node_file.write_text(json.dumps({"node_id": node_id}))
            self._node_id = node_id
            await self._start_components(node_id)
            log.info("swarm initialised; node %s (listen address %s recorded, not bound)",
                     node_id, listen_addr)
            return node_id

    async def leave(self, force: bool) -> None:
        async with self._lock:
            if not self._in_swarm():
                raise Unavailable("This node is not part of a swarm")
            if not force:
                # This node is always a manager (and the last one) until multi-host lands.
                raise Unavailable(LEAVE_LAST_MANAGER)
            await self._stop_components(shutdown_tasks=True)
            await self._store.wipe()
            with contextlib.suppress(FileNotFoundError):
                self._node_file.unlink()
            self._node_id = None
            await self._executor.teardown(remove_bridge=True)
            log.info("left the swarm")

    async def stop(self) -> None:
        """Daemon shutdown: containers keep running so that the next start adopts them."""
        async with self._lock:
            await self._stop_components(shutdown_tasks=False)

    async def _start_components(self, node_id: str) -> None:
        self._manager = Manager(self._store, self._clock, node_id=node_id)
        await self._manager.start()
        self._agent = Agent(self._executor, node_id=node_id, state_dir=self._state_dir / "agent",
                            description=self._description(), clock=self._clock)
        self._agent_task = asyncio.create_task(self._agent.run(self._connect))

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

    async def _stop_components(self, *, shutdown_tasks: bool) -> None:
        if self._agent is not None:
            await self._agent.stop(shutdown_tasks=shutdown_tasks)
        if self._agent_task is not None:
            self._agent_task.cancel()
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await self._agent_task
        if self._manager is not None:
            await self._manager.stop()
        for session in list(self._sessions):
            session.cancel()
        for session in list(self._sessions):
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await session
        self._agent = self._manager = self._agent_task = None

"""The Dispatcher component: agent sessions, task assignments, status reports and heartbeats.

Started and stopped by manager/manager.py; the daemon hands each agent connection to
`Manager.serve_agent`, which calls `Dispatcher.serve(reader, writer)` for the whole session
(frames of shoal/api/protocol.py):

  1. Register: the node must already exist (bootstrap or join made it); the dispatcher sets its
     Status ready, Addr and Description, and answers Registered with the cluster's heartbeat
     period, then Assignments(full=True).
  2. Store changes to the node's tasks become incremental Assignments, batched per `batch_s`.
     One dispatcher-wide watch routes each Task change by its NodeID to that node's session.
  3. Network views (manager/dispatcher/netstate.py): a session starts from the empty view
     NetworkState(node_addr=...) (the agent assumes it at Registered); after the full Assignments,
     and after each debounced burst of Task/Service/Network/Node changes that may matter, the
     node's view is recomputed and sent if it differs from the last one sent. A network new to
     the node is sent before the Assignments of the task that uses it.
  4. StatusBatch: each update is applied in one transaction per batch, only if its state ranks at
     least the stored one (states only move forward) and only to this node's tasks; DesiredState
     and Spec are never touched (the manager owns them).
  5. Logs (manager/dispatcher/logs.py): `task_logs` sends LogsRequest on the node's session; the
     read loop routes LogsChunk frames to the request without waiting on its reader.
  6. A node silent for 3 heartbeat periods is marked down ("heartbeat failure") and its session
     closed; a session that ends otherwise also marks its node down, unless a newer session of the
     same node has replaced it.
After start, nodes the store says are ready get 6 periods to register before they are marked down,
as swarmkit does after a leader change (their agents may be reconnecting).
"""

from __future__ import annotations

import asyncio
import contextlib
import datetime as dt
import logging
from collections.abc import AsyncGenerator
from dataclasses import dataclass, field

import msgspec

from shoal.api import protocol
from shoal.api.clock import Clock
from shoal.api.defaults import HEARTBEAT_PERIOD_NS
from shoal.api.errors import NotFound, Unavailable
from shoal.api.protocol import (
    Heartbeat,
    LogsChunk,
    NetworkState,
    Register,
    Registered,
    SessionError,
    StatusBatch,
    TaskStatusUpdate,
)
from shoal.api.services import LogLine
from shoal.api.types import Cluster, Network, Node, NodeStatus, Service, Task
from shoal.manager.dispatcher.assignments import AssignmentSet
from shoal.manager.dispatcher.logs import MAX_BUFFERED_BYTES, LogRouter
from shoal.manager.dispatcher.netstate import NetworkIndex, network_state_for
from shoal.store.protocol import Change, ReadTx, Store, Watch, WriteTx

log = logging.getLogger(__name__)

GRACE_MULTIPLIER = 3
STARTUP_GRACE_MULTIPLIER = 6
HEARTBEAT_FAILURE = "heartbeat failure"
SESSION_ENDED = "node session ended"
_SESSION_ERRORS = (asyncio.IncompleteReadError, ConnectionError, ValueError, msgspec.DecodeError)


@dataclass(eq=False)
class Session:
    node_id: str
    writer: asyncio.StreamWriter
    period_s: float
    last_seen: float
    assignments: AssignmentSet
    logs: LogRouter
    expired: bool = False
    backlog: list[Change] = field(default_factory=list)
    wake: asyncio.Event = field(default_factory=asyncio.Event)
    since: int | None = None  # the full set's revision: later Task changes go to `backlog`
    net_sent: NetworkState | None = None  # the last network view queued for the agent
    net_pending: NetworkState | None = None  # queued, not yet written


def heartbeat_period_ns(tx: ReadTx) -> int:
    """The cluster's configured period, or Shoal's default when unset."""
    for cluster in tx.list(Cluster):
        if cluster.spec.dispatcher.heartbeat_period > 0:
            return cluster.spec.dispatcher.heartbeat_period
    return HEARTBEAT_PERIOD_NS


class Dispatcher:
    """Component (start/stop) serving agent sessions. `check_heartbeats()` is one monitor pass."""

    def __init__(self, store: Store, clock: Clock, *, batch_s: float = 0.005,
                 register_timeout_s: float = 30.0, logs_buffer_bytes: int = MAX_BUFFERED_BYTES,
                 netstate_debounce_s: float = 0.03) -> None:
        self._store, self._clock = store, clock
        self._batch_s, self._register_timeout_s = batch_s, register_timeout_s
        self._netstate_debounce_s = netstate_debounce_s
        self._watch: Watch | None = None
        self._runners: list[asyncio.Task[None]] = []
        self._net_wake = asyncio.Event()
        self._logs_buffer_bytes = logs_buffer_bytes
        self._sessions: dict[str, Session] = {}
        self._unregistered: dict[str, float] = {}  # node id -> monotonic deadline to register by
        self._monitor: asyncio.Task[None] | None = None

    async def start(self) -> None:
        view = self._store.view()
        period_s = heartbeat_period_ns(view) / 1e9
        deadline = self._clock.monotonic() + STARTUP_GRACE_MULTIPLIER * period_s
        self._unregistered = {n.id: deadline for n in view.list(Node)
                              if n.status.state == "ready" and n.id not in self._sessions}
        self._monitor = asyncio.create_task(self._monitor_loop(period_s), name="dispatcher-heartbeats")
        self._start_router()

    def _start_router(self) -> None:
        if self._watch is None:
            self._watch = self._store.watch(kinds=(Task, Service, Network, Node))
            self._runners = [asyncio.create_task(self._route(self._watch), name="dispatcher-router"),
                             asyncio.create_task(self._network_loop(), name="dispatcher-netstate")]

    async def stop(self) -> None:
        if self._watch is not None:
            self._watch.close()
            self._watch = None
        for runner in self._runners:
            runner.cancel()
        for runner in self._runners:
            with contextlib.suppress(asyncio.CancelledError):
                await runner
        self._runners = []
        if self._monitor is not None:
            self._monitor.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._monitor
            self._monitor = None
        for session in list(self._sessions.values()):
            session.writer.close()  # ends its serve(): the reader sees end of stream

    def connected_nodes(self) -> list[str]:
        return sorted(self._sessions)

    async def task_logs(self, node_id: str, task_id: str, *, tail: int | None, since: dt.datetime | None,
                        follow: bool) -> AsyncGenerator[LogLine, None]:
        """The task's lines, read by the agent of `node_id` over its session (oldest first; with
        `follow`, until the caller stops iterating). A node without a session: Unavailable with
        `follow`, nothing without (see manager/dispatcher/logs.py for every error)."""
        session = self._sessions.get(node_id)
        if session is None:
            if follow:
                raise Unavailable(f"node {node_id} is not connected")
            log.info("logs of task %s: node %s is not connected", task_id, node_id)
            return
        lines = session.logs.read(task_id, tail=tail, since=since, follow=follow)
        async with contextlib.aclosing(lines):
            async for line in lines:
                yield line

    # ---------------------------------------------------------------------------------- session
    async def serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter, *,
                    first: Register | None = None, peer_node_id: str | None = None) -> None:
        """Run one agent session until the stream ends, the node expires or the dispatcher stops.

        `first`: the Register frame if the caller already read it (the cluster-port server reads
        the first frame to tell joins from sessions). `peer_node_id`: the node ID proven by the
        peer's TLS certificate; a Register for another node is refused. None means a trusted local
        stream (the socket pair inside one daemon)."""
        session: Session | None = None
        try:
            if first is None:
                message = await asyncio.wait_for(protocol.read_message(reader), self._register_timeout_s)
                if not isinstance(message, Register):
                    await protocol.write_message(writer, SessionError(message="expected register first"))
                    return
                first = message
            if peer_node_id is not None and first.node_id != peer_node_id:
                await protocol.write_message(writer, SessionError(
                    message=f"certificate is for node {peer_node_id}, not {first.node_id}"))
                return
            session = await self._register(first, writer)
            if session is not None:
                await self._run(session, reader)
        except (*_SESSION_ERRORS, TimeoutError) as exc:
            log.info("agent session %s ended: %r", session.node_id if session else "?", exc)
        finally:
            if session is not None:
                await self._end(session)
            writer.close()
            with contextlib.suppress(Exception):
                await writer.wait_closed()

    async def _register(self, msg: Register, writer: asyncio.StreamWriter) -> Session | None:
        def register(tx: WriteTx) -> int:
            node = tx.get(Node, msg.node_id)
            if node is None:
                raise NotFound(f"node {msg.node_id} not found")
            status = NodeStatus(state="ready", addr=msg.addr or node.status.addr)
            tx.update(msgspec.structs.replace(node, description=msg.description, status=status))
            return heartbeat_period_ns(tx)

        try:
            period_ns = await self._store.update(register)
        except NotFound as exc:
            await protocol.write_message(writer, SessionError(message=exc.message))
            return None
        old = self._sessions.get(msg.node_id)
        if old is not None:
            old.writer.close()  # the agent reconnected: the newer session wins
        self._unregistered.pop(msg.node_id, None)
        session = Session(node_id=msg.node_id, writer=writer, period_s=period_ns / 1e9,
                          last_seen=self._clock.monotonic(), assignments=AssignmentSet(msg.node_id),
                          logs=LogRouter(msg.node_id, writer, max_buffered_bytes=self._logs_buffer_bytes))
        self._sessions[msg.node_id] = session
        registered = Registered(node_id=msg.node_id, heartbeat_period_ns=period_ns)
        try:
            await protocol.write_message(writer, registered)
        except BaseException:
            await self._end(session)  # serve() never sees this session: end it here
            raise
        return session

    async def _run(self, session: Session, reader: asyncio.StreamReader) -> None:
        self._start_router()  # for callers that never called start()
        # No await from the snapshot to `since`: the router delivers every later change.
        view = self._store.view()
        tasks = list(view.tasks_of_node(session.node_id))
        session.since = view.revision
        node = view.get(Node, session.node_id)
        session.net_sent = NetworkState(node_addr=node.status.addr if node is not None else "")
        self._queue_network_state(session, network_state_for(session.node_id, view))
        streamer = asyncio.create_task(self._stream(session))
        try:
            await protocol.write_message(session.writer, session.assignments.full(tasks))
            await self._read_loop(session, reader)
        finally:
            streamer.cancel()
            with contextlib.suppress(asyncio.CancelledError, *_SESSION_ERRORS):
                await streamer

    async def _end(self, session: Session) -> None:
        session.logs.close(f"node {session.node_id}: session ended before the logs were complete")
        if self._sessions.get(session.node_id) is not session:
            return  # replaced by a newer session of the same node: it is not down
        del self._sessions[session.node_id]
        if not session.expired:
            await self._mark_down(session.node_id, SESSION_ENDED)

    # ------------------------------------------------------------------------------ assignments
    async def _route(self, watch: Watch) -> None:
        """Queue each Task change on its node's session (`_stream` sends them in batches); wake
        the network views' refresh when a change may alter them."""
        async for changes in watch:
            network_changed = False
            for change in changes:
                obj = change.obj
                if not isinstance(obj, Task):
                    network_changed = True  # a Service, Network or Node
                    continue
                network_changed = network_changed or bool(obj.networks_attachments)
                session = self._sessions.get(obj.node_id)
                if session is not None and session.since is not None and change.revision > session.since:
                    session.backlog.append(change)
                    session.wake.set()
            if network_changed:
                self._net_wake.set()

    async def _stream(self, session: Session) -> None:
        while True:
            await session.wake.wait()
            await self._clock.sleep(self._batch_s)  # one frame per burst of changes
            session.wake.clear()
            changes, session.backlog = session.backlog, []
            message = session.assignments.diff(changes)
            if message is not None and self._new_networks(session, message.tasks):
                self._queue_network_state(session, network_state_for(session.node_id, self._store.view()))
            state, session.net_pending = session.net_pending, None
            if state is not None:
                await protocol.write_message(session.writer, state)
            if message is not None:
                await protocol.write_message(session.writer, message)

    # ----------------------------------------------------------------------------- network views
    @staticmethod
    def _new_networks(session: Session, tasks: list[Task]) -> bool:
        """Whether a task is attached to a network the agent was not told about yet."""
        known = {n.network_id for n in session.net_sent.networks} if session.net_sent else set()
        return any(att.network.id not in known for t in tasks for att in t.networks_attachments or ())

    @staticmethod
    def _queue_network_state(session: Session, state: NetworkState) -> None:
        if state != session.net_sent:
            session.net_sent = session.net_pending = state
            session.wake.set()

    async def _network_loop(self) -> None:
        while True:
            await self._net_wake.wait()
            await self._clock.sleep(self._netstate_debounce_s)  # one refresh per burst of changes
            self._net_wake.clear()
            try:
                self.refresh_network_states()
            except Exception:
                log.exception("network state refresh failed")

    def refresh_network_states(self) -> None:
        """Recompute every session's network view from one snapshot; queue those that changed."""
        sessions = [s for s in self._sessions.values() if s.net_sent is not None]
        if sessions:
            index = NetworkIndex(self._store.view())
            for session in sessions:
                self._queue_network_state(session, index.state_for(session.node_id))

    # ------------------------------------------------------------------------------- agent input
    async def _read_loop(self, session: Session, reader: asyncio.StreamReader) -> None:
        while True:
            message = await protocol.read_message(reader)
            session.last_seen = self._clock.monotonic()
            if isinstance(message, LogsChunk):
                session.logs.deliver(message)  # never waits for the reader of the lines
            elif isinstance(message, StatusBatch):
                await self.apply_statuses(session.node_id, message.updates)
            elif not isinstance(message, Heartbeat):
                log.warning("node %s sent an unexpected %s", session.node_id, type(message).__name__)

    async def apply_statuses(self, node_id: str, updates: list[TaskStatusUpdate]) -> int:
        """Write the node's task status reports in one transaction; returns how many were applied."""
        def apply(tx: WriteTx) -> int:
            applied = 0
            for update in updates:
                task = tx.get(Task, update.task_id)
                # Unknown tasks, other nodes' tasks and older observations are ignored.
                if task is None or task.node_id != node_id or update.status == task.status:
                    continue
                if update.status.state < task.status.state:
                    continue
                tx.update(msgspec.structs.replace(task, status=update.status))
                applied += 1
            return applied

        return await self._store.update(apply)

    # -------------------------------------------------------------------------------- heartbeats
    async def _monitor_loop(self, period_s: float) -> None:
        while True:
            await self._clock.sleep(period_s / 2)
            try:
                await self.check_heartbeats()
            except Exception:
                log.exception("heartbeat check failed")

    async def check_heartbeats(self) -> list[str]:
        """Mark down every node past its deadline; returns their ids."""
        now = self._clock.monotonic()
        expired: list[str] = []
        for session in list(self._sessions.values()):
            if not session.expired and now - session.last_seen > GRACE_MULTIPLIER * session.period_s:
                session.expired = True
                session.writer.close()
                expired.append(session.node_id)
        for node_id, deadline in list(self._unregistered.items()):
            if now > deadline:
                del self._unregistered[node_id]
                expired.append(node_id)
        for node_id in expired:
            await self._mark_down(node_id, HEARTBEAT_FAILURE)
        return expired

    async def _mark_down(self, node_id: str, message: str) -> None:
        def mark(tx: WriteTx) -> None:
            node = tx.get(Node, node_id)
            if node is None or (node.status.state == "down" and node.status.message == message):
                return
            status = msgspec.structs.replace(node.status, state="down", message=message)
            tx.update(msgspec.structs.replace(node, status=status))

        await self._store.update(mark)

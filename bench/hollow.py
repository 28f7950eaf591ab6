"""A "hollow" agent: the agent side of the dispatcher session (shoal/api/protocol.py), no containers.

Used by bench/bench_hollow.py to put many nodes on one real manager from one process (one asyncio
loop, one stream per node): it registers, heartbeats at the period the manager sends back in
Registered, and answers assignments at once with status reports:
  - an assigned task whose desired state is RUNNING -> RUNNING, with a fake PID (READY, a delayed
    restart, -> READY);
  - a task whose desired state is past RUNNING (shutdown, remove, ...) -> SHUTDOWN;
  - a task removed from the node (Assignments.removed, or left out of a full set) is forgotten.
Reports are batched like the real agent's (a 10 ms window, at most 1000 updates a frame); after a
(re)registration every known task's status is reported again, as agent/agent.py does.

Transports: `run_session(reader, writer)` takes any stream (a socket pair in tests, mTLS to the
cluster port in the benchmark, see `tls_connector`).
"""

from __future__ import annotations

import asyncio
import contextlib
import datetime as dt
import itertools
import random
from collections.abc import Awaitable, Callable

from shoal.agent.identity import NodeIdentity, open_session
from shoal.api import protocol as proto
from shoal.api.defaults import HEARTBEAT_PERIOD_NS
from shoal.api.states import TaskState
from shoal.api.types import (
    ContainerStatus,
    EngineDescription,
    NodeDescription,
    NodeResources,
    Platform,
    Task,
    TaskStatus,
)

STATUS_BATCH_WINDOW_S = 0.01
MAX_UPDATES_PER_BATCH = 1000
REGISTER_TIMEOUT_S = 30.0

Streams = tuple[asyncio.StreamReader, asyncio.StreamWriter]
Connect = Callable[[], Awaitable[Streams]]

_pids = itertools.count(100_000)


class HollowRejected(Exception):
    """The manager answered with a SessionError."""


def hollow_description(hostname: str, *, labels: dict[str, str] | None = None) -> NodeDescription:
    """What a hollow node reports about itself: a plausible 4-CPU, 8 GiB linux/amd64 host."""
    return NodeDescription(hostname=hostname, platform=Platform(architecture="x86_64", os="linux"),
                           resources=NodeResources(nano_cpus=4 * 10**9, memory_bytes=8 * 2**30),
                           engine=EngineDescription(engine_version="shoal-hollow", labels=labels))


class HollowAgent:
    """One node's hollow agent. `statuses` holds the last status reported for each task."""

    def __init__(self, node_id: str, description: NodeDescription, *, addr: str = "") -> None:
        self.node_id = node_id
        self.description = description
        self.addr = addr
        self.statuses: dict[str, TaskStatus] = {}
        self.period_s = HEARTBEAT_PERIOD_NS / 1e9
        self.registered = asyncio.Event()
        self.sessions = 0
        self.frames_in = 0
        self.frames_out = 0
        self._pending: dict[str, TaskStatus] = {}
        self._wake = asyncio.Event()
        self._stopping = asyncio.Event()

    @property
    def running(self) -> int:
        return sum(s.state == TaskState.RUNNING for s in self.statuses.values())

    def stop(self) -> None:
        self._stopping.set()

    # ----------------------------------------------------------------------------------- session
    async def run(self, connect: Connect, *, reconnect_max_s: float = 5.0) -> None:
        """Keep a session up until `stop()`, reconnecting with jittered backoff."""
        delay = 0.1
        while not self._stopping.is_set():
            before = self.sessions
            try:
                reader, writer = await connect()
                await self.run_session(reader, writer)
            except (OSError, EOFError, ValueError, TimeoutError, HollowRejected):
                pass
            if self.sessions > before:
                delay = 0.1
            if self._stopping.is_set():
                return
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._stopping.wait(), delay * random.uniform(0.5, 1.0))
            delay = min(delay * 2, reconnect_max_s)

    async def run_session(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        """One session on an open stream until the manager closes it or `stop()`; closes `writer`."""
        try:
            await self._register(reader, writer)
            lock = asyncio.Lock()  # heartbeats and status batches share the stream
            jobs = [asyncio.create_task(self._receive(reader)),
                    asyncio.create_task(self._heartbeat(writer, lock)),
                    asyncio.create_task(self._send(writer, lock)),
                    asyncio.create_task(self._stopping.wait())]
            try:
                done, _ = await asyncio.wait(jobs, return_when=asyncio.FIRST_COMPLETED)
            finally:
                for job in jobs:
                    job.cancel()
                for job in jobs:
                    with contextlib.suppress(asyncio.CancelledError, Exception):
                        await job
            for job in done:
                if not job.cancelled() and job.exception() is not None:
                    raise job.exception()  # type: ignore[misc]
        finally:
            self.registered.clear()
            writer.close()
            with contextlib.suppress(Exception):
                await asyncio.wait_for(writer.wait_closed(), 1.0)

    async def _register(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await self._write(writer, proto.Register(node_id=self.node_id, description=self.description,
                                                 addr=self.addr))
        reply = await asyncio.wait_for(proto.read_message(reader), REGISTER_TIMEOUT_S)
        if isinstance(reply, proto.SessionError):
            raise HollowRejected(reply.message)
        if not isinstance(reply, proto.Registered):
            raise ValueError(f"expected Registered, got {type(reply).__name__}")
        self.period_s = (reply.heartbeat_period_ns or HEARTBEAT_PERIOD_NS) / 1e9
        self.sessions += 1
        self.registered.set()
        if self.statuses:  # a new session: the manager hears every known task again
            self._pending = {**self.statuses, **self._pending}
            self._wake.set()

    async def _write(self, writer: asyncio.StreamWriter, message: proto.Message) -> None:
        await proto.write_message(writer, message)
        self.frames_out += 1

    async def _receive(self, reader: asyncio.StreamReader) -> None:
        while True:
            try:
                message = await proto.read_message(reader)
            except asyncio.IncompleteReadError:
                return  # the manager closed the session
            self.frames_in += 1
            if isinstance(message, proto.Assignments):
                self.apply(message)
            elif isinstance(message, proto.SessionError):
                raise HollowRejected(message.message)

    async def _heartbeat(self, writer: asyncio.StreamWriter, lock: asyncio.Lock) -> None:
        while True:
            await asyncio.sleep(self.period_s)
            async with lock:
                await self._write(writer, proto.Heartbeat())

    async def _send(self, writer: asyncio.StreamWriter, lock: asyncio.Lock) -> None:
        while True:
            await self._wake.wait()
            await asyncio.sleep(STATUS_BATCH_WINDOW_S)
            self._wake.clear()
            batch, self._pending = self._pending, {}
            updates = [proto.TaskStatusUpdate(task_id=tid, status=s) for tid, s in batch.items()]
            try:
                for i in range(0, len(updates), MAX_UPDATES_PER_BATCH):
                    async with lock:
                        chunk = updates[i:i + MAX_UPDATES_PER_BATCH]
                        await self._write(writer, proto.StatusBatch(updates=chunk))
            except BaseException:
                self._pending = {**batch, **self._pending}  # resend on the next session
                raise

    # -------------------------------------------------------------------------------- assignments
    def apply(self, message: proto.Assignments) -> None:
        """Turn an Assignments frame into status reports (pure bookkeeping, no I/O)."""
        if message.full:
            keep = {t.id for t in message.tasks}
            for tid in [tid for tid in self.statuses if tid not in keep]:
                self._forget(tid)
        for tid in message.removed:
            self._forget(tid)
        now = dt.datetime.now(dt.UTC)
        for task in message.tasks:
            status = self._next_status(task, now)
            if status is not None:
                self.statuses[task.id] = status
                self._pending[task.id] = status
                self._wake.set()

    def _next_status(self, task: Task, now: dt.datetime) -> TaskStatus | None:
        current = self.statuses.get(task.id) or task.status
        if task.desired_state < TaskState.RUNNING:  # READY: a delayed restart, prepared not started
            if current.state >= TaskState.READY:
                return None
            return TaskStatus(timestamp=now, state=TaskState.READY, message="prepared")
        if task.desired_state == TaskState.RUNNING:
            if current.state >= TaskState.RUNNING:
                return None  # running already (or finished: states only move forward)
            return TaskStatus(timestamp=now, state=TaskState.RUNNING, message="started",
                              container_status=ContainerStatus(container_id=task.id, pid=next(_pids)))
        if current.state.terminal:
            return None
        return TaskStatus(timestamp=now, state=TaskState.SHUTDOWN, message="shutdown",
                          container_status=ContainerStatus(container_id=task.id, exit_code=0))

    def _forget(self, task_id: str) -> None:
        self.statuses.pop(task_id, None)
        self._pending.pop(task_id, None)


def tls_connector(addr: str, identity: NodeIdentity) -> Connect:
    """A Connect over mutual TLS to the manager's cluster port (shoal/agent/identity.py)."""
    async def connect() -> Streams:
        return await open_session(addr, identity)

    return connect

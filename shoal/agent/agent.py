"""The agent: a node's end of the dispatcher session, and the owner of the node's task runners.

The daemon builds one `Agent` per host and runs `Agent.run(connect)` (the session kept up with
reconnects) until `Agent.stop`. Tests drive `run_session` over a socket pair.

Session (shoal/api/protocol.py): Register -> Registered, then the current status of every known
task in the first StatusBatch (so a manager converges after an agent or manager restart), then
Assignments in and Heartbeats plus StatusBatches (changes batched for <= 100 ms) out. A dropped
session does not touch the tasks: their runners keep going and their statuses wait for the next.
LogsRequest / LogsCancel are served by agent/logserve.py from the `logs` LogSource, if given.
NetworkState goes to `on_network_state` (agent/network/host.py `HostNetwork.submit`), if given;
at Registered it gets the empty view, which the manager assumes and does not send.
A frame that does not decode (e.g. a message type of a newer manager) is logged and skipped.

Tasks: one `TaskRunner` (agent/runner.py) per assigned task, each stepped by its own asyncio task
(`runner.drive`), woken by assignment changes or by its container's exit. A task leaves the agent
when the manager removes it (`Assignments.removed`) or leaves it out of a full Assignments: it is
shut down, its container removed, its logs forgotten.

Never start a container twice: every status is recorded in `state_dir/tasks.json` (TaskDB),
written to disk before `start` is called. A new Agent on the same state_dir (shoald restarted,
even by kill -9) adopts what the last one left:

| recorded status          | on the host             | result                                        |
|--------------------------|-------------------------|-----------------------------------------------|
| STARTING or RUNNING      | container running       | RUNNING with the same PID, watched            |
| STARTING or RUNNING      | no container / exited   | FAILED ("container vanished ..." / "exited") |
| before STARTING          | anything                | resumed (prepare is idempotent)               |
| terminal                 | anything                | container removed if still there              |
| (not recorded)           | container or bundle     | orphan: shut down and removed                 |
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import dataclasses
import logging
from collections.abc import Awaitable, Callable, Coroutine
from pathlib import Path
from typing import Any

import msgspec

from shoal.agent.exec.protocol import Executor
from shoal.agent.logserve import LogServer, locked_sender
from shoal.agent.race import race as _race
from shoal.agent.reconnect import keep_session
from shoal.agent.runner import TaskRunner, drive
from shoal.agent.taskdb import TaskDB
from shoal.api import protocol as proto
from shoal.api.clock import Clock
from shoal.api.defaults import HEARTBEAT_PERIOD_NS
from shoal.api.services import LogSource
from shoal.api.states import TaskState
from shoal.api.types import NodeDescription, Task, TaskStatus

log = logging.getLogger("shoal.agent")

REGISTER_TIMEOUT_S = 10.0
STATUS_BATCH_WINDOW_S = 0.01  # swarmkit waits 100 ms; a short window keeps task start latency low
MAX_UPDATES_PER_BATCH = 1000  # keeps one frame small even when 10k tasks report at once
DB_FLUSH_DELAY_S = 0.1
SETTLE_TIMEOUT_S = 60.0  # a task being removed: longest wait for its shutdown and removal
FORGOTTEN_KEPT = 10_000  # forgotten task ids remembered, so a late assignment cannot restart one

Connect = Callable[[], Awaitable[tuple[asyncio.StreamReader, asyncio.StreamWriter]]]
NetworkStateSink = Callable[[proto.NetworkState], None]


class SessionRejected(Exception):
    """The manager answered with a SessionError (e.g. unknown node, bad token)."""


@dataclasses.dataclass
class _Entry:
    runner: TaskRunner
    driver: asyncio.Task[None]
    leaving: bool = False  # being shut down to be forgotten: statuses no longer reported


class Agent:
    """A node's tasks and its session with a manager. See the module docstring."""

    def __init__(self, executor: Executor, *, node_id: str, state_dir: Path,
                 description: NodeDescription, clock: Clock, logs: LogSource | None = None,
                 on_network_state: NetworkStateSink | None = None) -> None:
        self.node_id = node_id
        self._on_network_state = on_network_state
        self._executor = executor
        self._clock = clock
        self._logs = logs  # task logs served to the manager; None: requests get an error
        if description.resources.nano_cpus == 0 and description.resources.memory_bytes == 0:
            description = msgspec.structs.replace(description, resources=executor.capacity())
        self._description = description
        self._db = TaskDB(state_dir)
        self._entries: dict[str, _Entry] = {}
        self._forgotten: collections.OrderedDict[str, None] = collections.OrderedDict()
        self._pending: dict[str, TaskStatus] = {}  # statuses not yet sent to a manager
        self._pending_event = asyncio.Event()
        self._db_dirty = asyncio.Event()
        self._stopping = asyncio.Event()
        self._start_lock = asyncio.Lock()
        self._started = False
        self._leaving = False
        self._background: set[asyncio.Task[None]] = set()
        self._sessions: set[asyncio.Future[None]] = set()
        self._commit: asyncio.Future[None] | None = None  # the pending group commit, if any
        self.sessions_registered = 0

    # ------------------------------------------------------------------------------- lifecycle
    async def start(self) -> None:
        """Adopt what a previous shoald left (see the module table) and start the runners.
        Idempotent; `run` and `run_session` call it."""
        async with self._start_lock:
            if self._started:
                return
            self._started = True
            records = self._db.load()
            for task_id in self._executor.known_task_ids():
                if task_id not in records:
                    await self._remove_orphan(task_id)
            for record in records.values():
                self._add(TaskRunner(record.task, self._executor, self._clock, status=record.status))
            self._spawn(self._flush_loop())
            log.info("agent %s started with %d known tasks", self.node_id, len(records))

    async def stop(self, *, shutdown_tasks: bool, timeout_s: float = SETTLE_TIMEOUT_S) -> None:
        """End the session and the runners. With `shutdown_tasks` (swarm leave) every task is
        shut down and removed first and the record is deleted; without (shoald stopping), the
        containers keep running for the next shoald to adopt."""
        if shutdown_tasks:
            await self.start()
            self._leaving = True  # assignments that still arrive must not add tasks back
            retiring = [self._forget(task_id) for task_id in list(self._entries)]
            waits = [t for t in retiring if t is not None]
            if waits:
                await asyncio.wait(waits, timeout=timeout_s)
            self._db.clear()
        self._stopping.set()
        if self._sessions:
            await asyncio.wait(self._sessions, timeout=REGISTER_TIMEOUT_S)
        tasks = [e.driver for e in self._entries.values()] + list(self._background)
        for t in tasks:
            t.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        for e in self._entries.values():
            e.runner.close()
        if not shutdown_tasks:
            self._flush_db()
        log.info("agent %s stopped (tasks %s)", self.node_id, "removed" if shutdown_tasks else "kept")

    def task_statuses(self) -> dict[str, TaskStatus]:
        """The agent's current status of each task it holds."""
        return {tid: e.runner.status for tid, e in self._entries.items()}

    # --------------------------------------------------------------------------------- session
    async def run(self, connect: Connect) -> None:
        """Keep a session up until `stop` (reconnect.keep_session). Tasks are not disturbed."""
        await self.start()
        await keep_session(connect, self.run_session, stopping=self._stopping, clock=self._clock,
                           registered=lambda: self.sessions_registered,
                           expected=(OSError, EOFError, ValueError, TimeoutError, SessionRejected))

    async def run_session(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        """One session on an open stream, until the manager closes it (returns), it fails
        (raises), or `stop` (returns). Closes `writer`."""
        await self.start()
        done: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self._sessions.add(done)
        try:
            if self._stopping.is_set():
                return
            period_s = await self._register(reader, writer)
            if self._on_network_state is not None:  # the manager's starting view: empty
                self._on_network_state(proto.NetworkState(node_addr=""))
            self._report_all()
            lock = asyncio.Lock()  # heartbeats, status batches and log chunks share the stream
            async with LogServer(self._logs, locked_sender(writer, lock)) as logs:
                await _race(self._receive(reader, logs), self._heartbeat(writer, lock, period_s),
                            self._send_statuses(writer, lock), self._stopping.wait())
        finally:
            done.set_result(None)
            self._sessions.discard(done)
            writer.close()
            with contextlib.suppress(Exception):
                await asyncio.wait_for(writer.wait_closed(), 1.0)

    async def _register(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> float:
        """Register and wait for Registered; returns the heartbeat period in seconds."""
        await proto.write_message(writer, proto.Register(node_id=self.node_id, description=self._description))
        reply = await asyncio.wait_for(proto.read_message(reader), REGISTER_TIMEOUT_S)
        if isinstance(reply, proto.SessionError):
            raise SessionRejected(reply.message)
        if not isinstance(reply, proto.Registered):
            raise ValueError(f"expected Registered, got {type(reply).__name__}")
        if reply.node_id != self.node_id:
            log.warning("manager registered node %s, this agent is %s", reply.node_id, self.node_id)
        self.sessions_registered += 1
        period_ns = reply.heartbeat_period_ns or HEARTBEAT_PERIOD_NS
        log.info("registered with the manager (heartbeat every %.1f s)", period_ns / 1e9)
        return period_ns / 1e9

    async def _receive(self, reader: asyncio.StreamReader, logs: LogServer) -> None:
        while True:
            try:
                message = await proto.read_message(reader)
            except asyncio.IncompleteReadError:
                log.info("the manager closed the session")
                return
            except msgspec.DecodeError as e:  # the frame was read whole: the stream is intact
                log.warning("undecodable frame from the manager, ignored: %s", e)
                continue
            if isinstance(message, proto.Assignments):
                self._apply(message)
            elif isinstance(message, proto.NetworkState):
                if self._on_network_state is not None:
                    self._on_network_state(message)
            elif isinstance(message, proto.LogsRequest | proto.LogsCancel):
                logs.handle(message)
            elif isinstance(message, proto.SessionError):
                raise SessionRejected(message.message)
            elif not isinstance(message, proto.Registered):
                log.warning("unexpected %s from the manager, ignored", type(message).__name__)

    async def _heartbeat(self, writer: asyncio.StreamWriter, lock: asyncio.Lock, period_s: float) -> None:
        while True:
            await self._clock.sleep(period_s)
            async with lock:
                await proto.write_message(writer, proto.Heartbeat())

    async def _send_statuses(self, writer: asyncio.StreamWriter, lock: asyncio.Lock) -> None:
        while True:
            await self._pending_event.wait()
            await self._clock.sleep(STATUS_BATCH_WINDOW_S)  # gather what changes meanwhile
            self._pending_event.clear()
            batch, self._pending = self._pending, {}
            updates = [proto.TaskStatusUpdate(task_id=tid, status=s) for tid, s in batch.items()]
            try:
                for i in range(0, len(updates), MAX_UPDATES_PER_BATCH):
                    async with lock:
                        await proto.write_message(
                            writer, proto.StatusBatch(updates=updates[i:i + MAX_UPDATES_PER_BATCH]))
            except BaseException:
                # Unsure what got through: send it all again (later statuses win; resending is
                # harmless since of two observations the manager keeps the greater).
                self._pending = {**batch, **self._pending}
                self._pending_event.set()
                raise

    def _report_all(self) -> None:
        self._pending = {tid: e.runner.status for tid, e in self._entries.items() if not e.leaving}
        self._pending_event.set()

    # ----------------------------------------------------------------------------- assignments
    def _apply(self, message: proto.Assignments) -> None:
        if self._leaving:
            return
        assigned = {task.id for task in message.tasks}
        for task in message.tasks:
            self._upsert(task)
        gone = list(message.removed)
        if message.full:  # what a full set leaves out is no longer this node's
            gone += [tid for tid in self._entries if tid not in assigned]
        for task_id in gone:
            self._forget(task_id)

    def _upsert(self, task: Task) -> None:
        entry = self._entries.get(task.id)
        if entry is not None:
            if not entry.leaving:
                entry.runner.update(task)
                self._db.put(task, entry.runner.status)
                self._db_dirty.set()
            return
        if task.id in self._forgotten:
            log.warning("task %s was removed from this node; assignment ignored", task.id)
            return
        # The manager's status is the starting point: a task it saw STARTING or RUNNING here is
        # checked and adopted, never started again (the runner sees a recovered status).
        runner = TaskRunner(task, self._executor, self._clock)
        self._add(runner)
        self._db.put(task, runner.status)
        self._db_dirty.set()

    def _add(self, runner: TaskRunner) -> None:
        driver = asyncio.create_task(self._drive(runner), name=f"task-{runner.task_id}")
        self._entries[runner.task_id] = _Entry(runner=runner, driver=driver)

    async def _drive(self, runner: TaskRunner) -> None:
        try:
            await drive(runner, self._on_status)
        except Exception:  # e.g. tasks.json cannot be written: the task must not start then
            log.exception("task %s: runner stopped", runner.task_id)

    def _on_status(self, runner: TaskRunner) -> Awaitable[None] | None:
        """Record a changed status; called by the driver before the runner's next step."""
        status = runner.status
        self._db.put(runner.task, status)
        entry = self._entries.get(runner.task_id)
        if entry is not None and not entry.leaving:
            self._pending[runner.task_id] = status
            self._pending_event.set()
        if status.state is TaskState.STARTING or status.state.terminal:
            # On disk before `start` runs (no second start after a crash), and before the
            # container of a finished task is removed (else a restart would call it vanished).
            return self._durable()
        self._db_dirty.set()
        return None

    def _durable(self) -> Awaitable[None]:
        """Done once all that is recorded so far is on disk. Group commit: every task that
        asks in one pass of the event loop shares one write (100 tasks starting at once must
        not mean 100 rewrites of the file)."""
        if self._commit is None:
            loop = asyncio.get_running_loop()
            self._commit = loop.create_future()
            loop.call_soon(self._group_commit)
        return asyncio.shield(self._commit)  # a cancelled waiter must not cancel the others

    def _group_commit(self) -> None:
        commit, self._commit = self._commit, None
        if commit is None:
            return
        try:
            self._db.flush()
        except OSError as e:  # the waiting runners stop: better stuck in STARTING than started twice
            commit.set_exception(e)
            commit.exception()  # retrieved here: a commit nobody waits for any more is not an error
        else:
            commit.set_result(None)

    def _forget(self, task_id: str) -> asyncio.Task[None] | None:
        """Shut the task down, remove it, forget it (in the background); None if unknown."""
        entry = self._entries.get(task_id)
        if entry is None or entry.leaving:
            return None
        entry.leaving = True
        self._pending.pop(task_id, None)
        return self._spawn(self._retire(entry))

    async def _retire(self, entry: _Entry) -> None:
        runner = entry.runner
        runner.update(msgspec.structs.replace(runner.task, desired_state=TaskState.SHUTDOWN))
        try:
            await asyncio.wait_for(runner.wait_settled(), SETTLE_TIMEOUT_S)
        except TimeoutError:
            log.error("task %s: not shut down and removed after %.0f s; forgotten anyway",
                      runner.task_id, SETTLE_TIMEOUT_S)
        entry.driver.cancel()
        await asyncio.gather(entry.driver, return_exceptions=True)
        runner.close()
        try:
            await self._executor.forget_logs(runner.task_id)
        except Exception:
            log.exception("task %s: cannot delete its logs", runner.task_id)
        self._entries.pop(runner.task_id, None)
        self._forgotten[runner.task_id] = None
        while len(self._forgotten) > FORGOTTEN_KEPT:
            self._forgotten.popitem(last=False)
        self._db.delete(runner.task_id)
        self._flush_db()
        log.info("task %s: removed from this node", runner.task_id)

    # ------------------------------------------------------------------------------- host state
    async def _remove_orphan(self, task_id: str) -> None:
        """A container no record knows (e.g. prepared, then shoald died before recording it)."""
        log.warning("task %s: container not in %s: removing it", task_id, self._db.path)
        try:
            info = await self._executor.inspect(task_id)
            if info is not None and info.running:
                await self._executor.shutdown(Task(id=task_id))
            await self._executor.remove(task_id)
            await self._executor.forget_logs(task_id)
        except Exception:
            log.exception("task %s: cannot remove orphaned container", task_id)

    async def _flush_loop(self) -> None:
        while True:
            await self._db_dirty.wait()
            await self._clock.sleep(DB_FLUSH_DELAY_S)  # one write for a burst of changes
            self._db_dirty.clear()
            self._flush_db()

    def _flush_db(self) -> None:
        try:
            self._db.flush()
        except OSError:
            log.exception("cannot write %s", self._db.path)

    def _spawn(self, coro: Coroutine[Any, Any, None]) -> asyncio.Task[None]:
        task = asyncio.create_task(coro)
        self._background.add(task)
        task.add_done_callback(self._background.discard)
        return task


"""Dispatcher sessions over a real socket pair, with a real SqliteStore(":memory:")."""

from __future__ import annotations

import asyncio
import datetime as dt
import socket
from collections.abc import Callable, Coroutine
from dataclasses import dataclass
from typing import Any

import msgspec
import pytest

from shoal.api.protocol import (
    Assignments,
    Heartbeat,
    Message,
    Register,
    Registered,
    SessionError,
    StatusBatch,
    TaskStatusUpdate,
    read_message,
    write_message,
)
from shoal.api.states import TaskState
from shoal.api.types import (
    Cluster,
    DispatcherConfig,
    Node,
    NodeDescription,
    NodeSpec,
    SwarmSpec,
    Task,
    TaskStatus,
)
from shoal.manager.dispatcher.assignments import is_agents
from shoal.manager.dispatcher.dispatcher import HEARTBEAT_FAILURE, SESSION_ENDED, Dispatcher
from shoal.store.protocol import ReadTx, WriteTx
from shoal.store.sqlite import SqliteStore

PERIOD_NS = 1_000_000_000
DEADLINE_S = 5.0


class FakeClock:
    """Real time for sleeps and timestamps; monotonic time can be pushed forward by the test."""

    def __init__(self) -> None:
        self.offset_s = 0.0
        self._loop_time = asyncio.get_running_loop().time

    def now(self) -> dt.datetime:
        return dt.datetime.now(dt.UTC)

    def monotonic(self) -> float:
        return self._loop_time() + self.offset_s

    async def sleep(self, seconds: float) -> None:
        await asyncio.sleep(seconds)


@dataclass
class Rig:
    store: SqliteStore
    clock: FakeClock
    dispatcher: Dispatcher
    reader: asyncio.StreamReader
    writer: asyncio.StreamWriter
    served: asyncio.Task[None]

    async def recv(self) -> Message:
        return await asyncio.wait_for(read_message(self.reader), DEADLINE_S)

    async def send(self, message: Message) -> None:
        await write_message(self.writer, message)

    async def until(self, predicate: Callable[[ReadTx], bool]) -> None:
        """Wait, with a deadline, for the store to satisfy `predicate` (checked after each commit)."""
        watch = self.store.watch()
        try:
            async def wait() -> None:
                if predicate(self.store.view()):
                    return
                async for _ in watch:
                    if predicate(self.store.view()):
                        return
            await asyncio.wait_for(wait(), DEADLINE_S)
        finally:
            watch.close()

    async def close(self) -> None:
        self.writer.close()
        await asyncio.wait_for(self.served, DEADLINE_S)
        await self.dispatcher.stop()
        await self.store.close()


def _task(tid: str, node_id: str, state: TaskState, desired: TaskState = TaskState.RUNNING) -> Task:
    return Task(id=tid, service_id="svc", slot=1, node_id=node_id, status=TaskStatus(state=state),
                desired_state=desired)


async def _rig(tasks: list[Task]) -> Rig:
    store = SqliteStore(":memory:")
    await store.open()

    def seed(tx: WriteTx) -> None:
        tx.create(Cluster(id="c1", spec=SwarmSpec(dispatcher=DispatcherConfig(heartbeat_period=PERIOD_NS))))
        tx.create(Node(id="n1", spec=NodeSpec(role="worker", availability="active")))
        for t in tasks:
            tx.create(t)

    await store.update(seed)
    clock = FakeClock()
    dispatcher = Dispatcher(store, clock, batch_s=0.01)
    await dispatcher.start()
    manager_sock, agent_sock = socket.socketpair()
    m_reader, m_writer = await asyncio.open_connection(sock=manager_sock)
    served = asyncio.create_task(dispatcher.serve(m_reader, m_writer))
    reader, writer = await asyncio.open_connection(sock=agent_sock)
    return Rig(store, clock, dispatcher, reader, writer, served)


async def _registered(tasks: list[Task]) -> tuple[Rig, Assignments]:
    rig = await _rig(tasks)
    await rig.send(Register(node_id="n1", description=NodeDescription(hostname="h1"), addr="10.0.0.1"))
    registered = await rig.recv()
    assert registered == Registered(node_id="n1", heartbeat_period_ns=PERIOD_NS)
    full = await rig.recv()
    assert isinstance(full, Assignments) and full.full
    return rig, full


def run(scenario: Callable[[], Coroutine[Any, Any, None]]) -> None:
    asyncio.run(scenario())


def test_register_marks_ready_and_sends_the_full_set() -> None:
    async def scenario() -> None:
        rig, full = await _registered([
            _task("t-assigned", "n1", TaskState.ASSIGNED), _task("t-running", "n1", TaskState.RUNNING),
            _task("t-pending", "n1", TaskState.PENDING), _task("t-other", "n2", TaskState.ASSIGNED),
            _task("t-done", "n1", TaskState.COMPLETE, desired=TaskState.SHUTDOWN),
            _task("t-stopping", "n1", TaskState.RUNNING, desired=TaskState.SHUTDOWN),
        ])
        assert [t.id for t in full.tasks] == ["t-assigned", "t-running", "t-stopping"]
        node = rig.store.view().get(Node, "n1")
        assert node is not None
        assert (node.status.state, node.status.addr, node.description.hostname) == ("ready", "10.0.0.1", "h1")
        await rig.close()
    run(scenario)


def test_later_assignment_arrives_incrementally_and_removal_follows() -> None:
    async def scenario() -> None:
        rig, full = await _registered([])
        assert full.tasks == []
        await rig.store.update(lambda tx: tx.create(_task("t1", "n1", TaskState.ASSIGNED)))
        incremental = await rig.recv()
        assert isinstance(incremental, Assignments) and not incremental.full
        assert [t.id for t in incremental.tasks] == ["t1"] and incremental.removed == []
        await rig.store.update(lambda tx: tx.delete(Task, "t1"))
        removal = await rig.recv()
        assert isinstance(removal, Assignments) and removal.removed == ["t1"] and removal.tasks == []
        await rig.close()
    run(scenario)


def _state(tid: str) -> Callable[[ReadTx], TaskState | None]:
    def get(tx: ReadTx) -> TaskState | None:
        task = tx.get(Task, tid)
        return task.status.state if task else None
    return get


def test_status_batches_move_state_forward_only() -> None:
    async def scenario() -> None:
        rig, _ = await _registered([_task("t1", "n1", TaskState.ASSIGNED),
                                    _task("x", "n2", TaskState.ASSIGNED)])
        running = TaskStatus(state=TaskState.RUNNING, message="started")
        await rig.send(StatusBatch(updates=[TaskStatusUpdate(task_id="t1", status=running),
                                            TaskStatusUpdate(task_id="ghost", status=running),
                                            TaskStatusUpdate(task_id="x", status=running)]))
        await rig.until(lambda tx: _state("t1")(tx) == TaskState.RUNNING)
        # An older observation is ignored; the later batch proves it was processed first.
        await rig.send(StatusBatch(updates=[TaskStatusUpdate(
            task_id="t1", status=TaskStatus(state=TaskState.ACCEPTED, message="old"))]))
        await rig.send(StatusBatch(updates=[TaskStatusUpdate(
            task_id="t1", status=TaskStatus(state=TaskState.RUNNING, message="still running"))]))
        await rig.until(lambda tx: (t := tx.get(Task, "t1")) is not None
                        and t.status.message == "still running")
        view = rig.store.view()
        t1, x = view.get(Task, "t1"), view.get(Task, "x")
        assert t1 is not None and x is not None
        assert (t1.status.state, t1.desired_state) == (TaskState.RUNNING, TaskState.RUNNING)
        assert x.status.state == TaskState.ASSIGNED  # another node's task: untouched
        assert view.get(Task, "ghost") is None
        await rig.close()
    run(scenario)


def test_status_echo_is_not_resent_but_desired_state_change_is() -> None:
    async def scenario() -> None:
        rig, _ = await _registered([_task("t1", "n1", TaskState.ASSIGNED)])
        await rig.send(StatusBatch(updates=[TaskStatusUpdate(
            task_id="t1", status=TaskStatus(state=TaskState.RUNNING))]))
        await rig.until(lambda tx: _state("t1")(tx) == TaskState.RUNNING)

        def shut_down(tx: WriteTx) -> None:
            task = tx.get(Task, "t1")
            assert task is not None
            tx.update(msgspec.structs.replace(task, desired_state=TaskState.SHUTDOWN))

        await rig.store.update(shut_down)
        # The next frame is the desired-state change, not an echo of the agent's own report.
        frame = await rig.recv()
        assert isinstance(frame, Assignments)
        assert [(t.id, t.desired_state) for t in frame.tasks] == [("t1", TaskState.SHUTDOWN)]
        await rig.close()
    run(scenario)


def test_missed_heartbeats_mark_the_node_down() -> None:
    async def scenario() -> None:
        rig, _ = await _registered([])
        await rig.send(Heartbeat())
        assert await rig.dispatcher.check_heartbeats() == []
        rig.clock.offset_s += 3 * PERIOD_NS / 1e9 + 1
        assert await rig.dispatcher.check_heartbeats() == ["n1"]
        node = rig.store.view().get(Node, "n1")
        assert node is not None and (node.status.state, node.status.message) == ("down", HEARTBEAT_FAILURE)
        with pytest.raises((asyncio.IncompleteReadError, ConnectionResetError)):
            await rig.recv()  # the dispatcher closed the session
        await rig.close()
    run(scenario)


def test_session_end_marks_the_node_down() -> None:
    async def scenario() -> None:
        rig, _ = await _registered([])
        rig.writer.close()
        await asyncio.wait_for(rig.served, DEADLINE_S)
        node = rig.store.view().get(Node, "n1")
        assert node is not None and (node.status.state, node.status.message) == ("down", SESSION_ENDED)
        await rig.close()
    run(scenario)


def test_unknown_node_is_refused() -> None:
    async def scenario() -> None:
        rig = await _rig([])
        await rig.send(Register(node_id="nope", description=NodeDescription()))
        assert await rig.recv() == SessionError(message="node nope not found")
        await rig.close()
    run(scenario)


@pytest.mark.parametrize(("state", "desired", "mine"), [
    (TaskState.PENDING, TaskState.RUNNING, False),
    (TaskState.ASSIGNED, TaskState.RUNNING, True),
    (TaskState.RUNNING, TaskState.SHUTDOWN, True),
    (TaskState.FAILED, TaskState.RUNNING, True),
    (TaskState.FAILED, TaskState.SHUTDOWN, False),
    (TaskState.SHUTDOWN, TaskState.REMOVE, False),
])
def test_assignment_relevance(state: TaskState, desired: TaskState, mine: bool) -> None:
    assert is_agents(_task("t", "n1", state, desired), "n1") is mine

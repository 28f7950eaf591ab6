"""The agent (shoal/agent/agent.py) over a real socket pair against a fake manager end.

The fake manager speaks shoal/api/protocol.py frames; the executor is the in-memory FakeExecutor,
whose FakeHost outlives an Agent so a second Agent on the same state_dir mimics a shoald restart.
"""

from __future__ import annotations

import asyncio
import socket
from collections.abc import Callable
from pathlib import Path

import msgspec
import pytest

from shoal.agent.agent import Agent, SessionRejected
from shoal.agent.exec.protocol import ContainerInfo
from shoal.agent.runner import ERR_EXIT_UNKNOWN, ERR_VANISHED
from shoal.agent.taskdb import TaskDB
from shoal.api import protocol as proto
from shoal.api.clock import SystemClock
from shoal.api.states import TaskState
from shoal.api.types import ContainerSpec, NodeDescription, Task, TaskSpec, TaskStatus
from shoal.testing.fake_executor import FakeContainer, FakeExecutor, FakeHost

S = TaskState
DEADLINE_S = 5.0
NODE = "node1"
HEARTBEAT_NS = 20_000_000


def make_task(task_id: str, desired: TaskState = S.RUNNING) -> Task:
    return Task(id=task_id, node_id=NODE, desired_state=desired,
                spec=TaskSpec(container_spec=ContainerSpec(image="busybox")),
                status=TaskStatus(state=S.ASSIGNED, message="scheduler assigned task to node"))


class FakeManager:
    """The manager's end of one session: answers Register, records what the agent sends."""

    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.reader, self.writer = reader, writer
        self.batches: list[proto.StatusBatch] = []
        self.statuses: dict[str, TaskStatus] = {}
        self.heartbeats = 0
        self.register: proto.Register | None = None
        self._cond = asyncio.Condition()
        self._serving: asyncio.Task[None] | None = None

    async def handshake(self, reply: proto.Message | None = None) -> proto.Register:
        first = await asyncio.wait_for(proto.read_message(self.reader), DEADLINE_S)
        assert isinstance(first, proto.Register), f"first frame was {first!r}"
        self.register = first
        await self.send(reply or proto.Registered(node_id=first.node_id, heartbeat_period_ns=HEARTBEAT_NS))
        self._serving = asyncio.create_task(self._serve())
        return first

    async def _serve(self) -> None:
        while True:
            try:
                message = await proto.read_message(self.reader)
            except (asyncio.IncompleteReadError, ConnectionError):
                return
            if isinstance(message, proto.Heartbeat):
                self.heartbeats += 1
            elif isinstance(message, proto.StatusBatch):
                self.batches.append(message)
                for u in message.updates:
                    # Of two observations the greater wins, as the dispatcher applies them.
                    old = self.statuses.get(u.task_id)
                    assert old is None or u.status.state >= old.state, f"{u.task_id} went back"
                    self.statuses[u.task_id] = u.status
            else:
                raise AssertionError(f"unexpected {message!r}")
            async with self._cond:
                self._cond.notify_all()

    async def send(self, message: proto.Message) -> None:
        await proto.write_message(self.writer, message)

    async def assign(self, tasks: list[Task], *, full: bool = True, removed: list[str] | None = None) -> None:
        await self.send(proto.Assignments(full=full, tasks=tasks, removed=removed or []))

    async def until(self, pred: Callable[[], bool], what: str) -> None:
        async with self._cond:
            try:
                await asyncio.wait_for(self._cond.wait_for(pred), DEADLINE_S)
            except TimeoutError:
                raise AssertionError(f"timed out waiting for {what}; statuses {self.statuses}") from None

    async def until_state(self, task_id: str, state: TaskState) -> TaskStatus:
        await self.until(lambda: task_id in self.statuses and self.statuses[task_id].state is state,
                         f"{task_id} {state.value}")
        return self.statuses[task_id]

    async def close(self) -> None:
        self.writer.close()
        if self._serving is not None:
            await asyncio.wait_for(self._serving, DEADLINE_S)


async def socket_pair() -> tuple[tuple[asyncio.StreamReader, asyncio.StreamWriter], FakeManager]:
    agent_sock, manager_sock = socket.socketpair()
    agent_end = await asyncio.open_connection(sock=agent_sock)
    manager_end = await asyncio.open_connection(sock=manager_sock)
    return agent_end, FakeManager(*manager_end)


async def open_session(agent: Agent) -> tuple[FakeManager, asyncio.Task[None]]:
    (reader, writer), manager = await socket_pair()
    session = asyncio.create_task(agent.run_session(reader, writer))
    await manager.handshake()
    return manager, session


def new_agent(executor: FakeExecutor, state_dir: Path) -> Agent:
    return Agent(executor, node_id=NODE, state_dir=state_dir,
                 description=NodeDescription(hostname="host1"), clock=SystemClock())


async def wait_container_gone(ex: FakeExecutor, task_id: str) -> None:
    """The runner removes a container right after reporting; wait for it with a deadline."""
    async with asyncio.timeout(DEADLINE_S):
        while task_id in ex.host.containers:
            await asyncio.sleep(0.005)


def test_register_first_then_full_assignment_runs_tasks(tmp_path: Path) -> None:
    async def scenario() -> None:
        ex = FakeExecutor()
        agent = new_agent(ex, tmp_path)
        manager, session = await open_session(agent)
        assert manager.register is not None and manager.register.node_id == NODE
        assert manager.register.description.resources == ex.capacity()  # filled from the executor
        await manager.assign([make_task("t1"), make_task("t2")])
        for tid in ("t1", "t2"):
            status = await manager.until_state(tid, S.RUNNING)
            assert status.container_status is not None
            assert status.container_status.pid == ex.host.containers[tid].pid > 0
            assert ex.host.starts[tid] == 1
        await manager.until(lambda: manager.heartbeats >= 3, "3 heartbeats")
        await agent.stop(shutdown_tasks=False)
        await asyncio.wait_for(session, DEADLINE_S)
        await manager.close()
        assert ex.host.containers["t1"].running  # a stopping shoald leaves its containers running

    asyncio.run(scenario())


def test_desired_shutdown_and_removal_from_full_set(tmp_path: Path) -> None:
    async def scenario() -> None:
        ex = FakeExecutor()
        agent = new_agent(ex, tmp_path)
        manager, _ = await open_session(agent)
        await manager.assign([make_task("t1"), make_task("t2"), make_task("t3")])
        for tid in ("t1", "t2", "t3"):
            await manager.until_state(tid, S.RUNNING)
        await manager.assign([make_task("t1", S.SHUTDOWN)], full=False)
        status = await manager.until_state("t1", S.SHUTDOWN)
        assert status.message == "shutdown" and ex.count("shutdown", "t1") == 1
        await wait_container_gone(ex, "t1")
        await manager.assign([make_task("t1", S.SHUTDOWN), make_task("t3")])  # t2 left out
        await wait_container_gone(ex, "t2")
        assert ex.count("shutdown", "t2") == 1
        await manager.assign([], full=False, removed=["t3"])
        await wait_container_gone(ex, "t3")
        async with asyncio.timeout(DEADLINE_S):
            while set(agent.task_statuses()) != {"t1"}:
                await asyncio.sleep(0.005)
        assert ("forget_logs", "t2") in ex.calls and ("forget_logs", "t3") in ex.calls
        assert set(TaskDB(tmp_path).load()) == {"t1"}
        # A task once removed from this node is not started again by a stale assignment.
        await manager.assign([make_task("t1", S.SHUTDOWN), make_task("t2")])
        await manager.assign([make_task("t1", S.SHUTDOWN)])
        assert ex.host.starts["t2"] == 1
        await agent.stop(shutdown_tasks=False)
        await manager.close()

    asyncio.run(scenario())


def test_restart_adopts_running_task_without_starting_it_again(tmp_path: Path) -> None:
    host = FakeHost()
    pids: dict[str, int] = {}

    async def first_shoald() -> None:
        ex = FakeExecutor(host=host)
        manager, _ = await open_session(new_agent(ex, tmp_path))
        await manager.assign([make_task("t1"), make_task("t2")])
        for tid in ("t1", "t2"):
            status = await manager.until_state(tid, S.RUNNING)
            assert status.container_status is not None
            pids[tid] = status.container_status.pid
        await manager.close()
        # Returning ends the loop, which cancels the agent's tasks mid-flight: no stop(), no
        # final flush, as after kill -9.

    asyncio.run(first_shoald())
    del host.containers["t2"]  # someone removed t2's container while shoald was down
    host.containers["orphan"] = FakeContainer(task_id="orphan", container_id="c-orphan", image="x",
                                              pid=4242, started=True, running=True)

    async def second_shoald() -> None:
        ex = FakeExecutor(host=host)
        agent = new_agent(ex, tmp_path)
        manager, _ = await open_session(agent)
        # The first batch reports every known task, before any assignment arrives.
        t1 = await manager.until_state("t1", S.RUNNING)
        assert t1.container_status is not None and t1.container_status.pid == pids["t1"]
        t2 = await manager.until_state("t2", S.FAILED)
        assert t2.err == ERR_VANISHED
        assert "orphan" not in host.containers and ex.count("shutdown", "orphan") == 1
        seen_t1 = msgspec.structs.replace(make_task("t1"), status=t1)
        await manager.assign([seen_t1, msgspec.structs.replace(make_task("t2"), status=t2)])
        ex.exit("t1", 0)
        failed = await manager.until_state("t1", S.FAILED)
        assert failed.err == ERR_EXIT_UNKNOWN
        assert host.starts["t1"] == 1 and ex.count("start", "t1") == 0
        await agent.stop(shutdown_tasks=False)
        await manager.close()

    asyncio.run(second_shoald())


def test_reconnect_keeps_tasks_and_reports_them_again(tmp_path: Path) -> None:
    async def scenario() -> None:
        ex = FakeExecutor()
        agent = new_agent(ex, tmp_path)
        managers: asyncio.Queue[FakeManager] = asyncio.Queue()

        async def connect() -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
            agent_end, manager = await socket_pair()
            managers.put_nowait(manager)
            return agent_end

        run = asyncio.create_task(agent.run(connect))
        first = await asyncio.wait_for(managers.get(), DEADLINE_S)
        await first.handshake()
        await first.assign([make_task("t1")])
        running = await first.until_state("t1", S.RUNNING)
        await first.close()  # the manager goes away
        second = await asyncio.wait_for(managers.get(), DEADLINE_S)
        await second.handshake()
        assert await second.until_state("t1", S.RUNNING) == running
        assert ex.host.starts["t1"] == 1 and ex.host.containers["t1"].running
        await agent.stop(shutdown_tasks=False)
        await asyncio.wait_for(run, DEADLINE_S)
        await second.close()

    asyncio.run(scenario())


def test_leave_shuts_down_and_removes_every_task(tmp_path: Path) -> None:
    async def scenario() -> None:
        ex = FakeExecutor()
        agent = new_agent(ex, tmp_path)
        manager, session = await open_session(agent)
        await manager.assign([make_task("t1"), make_task("t2")])
        for tid in ("t1", "t2"):
            await manager.until_state(tid, S.RUNNING)
        await agent.stop(shutdown_tasks=True)
        await asyncio.wait_for(session, DEADLINE_S)
        await manager.close()
        assert ex.host.containers == {}
        assert ex.count("shutdown", "t1") == 1 and ex.count("shutdown", "t2") == 1
        assert not (tmp_path / "tasks.json").exists()

    asyncio.run(scenario())


def test_session_error_is_raised(tmp_path: Path) -> None:
    async def scenario() -> None:
        agent = new_agent(FakeExecutor(), tmp_path)
        (reader, writer), manager = await socket_pair()
        session = asyncio.create_task(agent.run_session(reader, writer))
        await manager.handshake(proto.SessionError(message="node node1 is not a member"))
        with pytest.raises(SessionRejected, match="not a member"):
            await asyncio.wait_for(session, DEADLINE_S)
        await agent.stop(shutdown_tasks=False)
        await manager.close()

    asyncio.run(scenario())


class DiskCheckingExecutor(FakeExecutor):
    """Records, at each `start`, what tasks.json on disk says of the task."""

    def __init__(self, state_dir: Path) -> None:
        super().__init__()
        self.state_dir = state_dir
        self.on_disk_at_start: dict[str, TaskState] = {}

    async def start(self, task: Task) -> ContainerInfo:
        record = TaskDB(self.state_dir).load().get(task.id)
        self.on_disk_at_start[task.id] = record.status.state if record else S.NEW
        return await super().start(task)


def test_starting_is_on_disk_before_the_container_starts(tmp_path: Path) -> None:
    async def scenario() -> None:
        ex = DiskCheckingExecutor(tmp_path)
        agent = new_agent(ex, tmp_path)
        manager, _ = await open_session(agent)
        await manager.assign([make_task("t1")])
        await manager.until_state("t1", S.RUNNING)
        assert ex.on_disk_at_start == {"t1": S.STARTING}
        await agent.stop(shutdown_tasks=False)
        await manager.close()

    asyncio.run(scenario())

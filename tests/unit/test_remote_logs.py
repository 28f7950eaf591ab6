"""Task logs over the agent session: ClusterLogSource -> Dispatcher -> socket pair -> Agent -> LogSource.

A real Dispatcher on a SqliteStore(":memory:") on one end, a real Agent (FakeExecutor) on the other,
and an in-memory LogSource on the agent's side. LogServer's batching is tested on its own at the end.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import functools
import socket
from collections.abc import AsyncIterator, Callable, Coroutine
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from shoal.agent import logserve
from shoal.agent.agent import Agent
from shoal.api import protocol as proto
from shoal.api.clock import SystemClock
from shoal.api.errors import NotFound, ShoalError, Unavailable
from shoal.api.services import LogLine, LogSource
from shoal.api.states import TaskState
from shoal.api.types import (
    Cluster,
    ContainerSpec,
    DispatcherConfig,
    Node,
    NodeDescription,
    NodeSpec,
    SwarmSpec,
    Task,
    TaskSpec,
    TaskStatus,
)
from shoal.manager.dispatcher.dispatcher import Dispatcher
from shoal.manager.dispatcher.logs import ClusterLogSource
from shoal.store.protocol import ReadTx, WriteTx
from shoal.store.sqlite import SqliteStore
from shoal.testing.fake_executor import FakeExecutor

DEADLINE_S = 5.0
T0 = dt.datetime(2024, 5, 1, 12, 0, 0, 123456, tzinfo=dt.UTC)


def line(i: int, size: int = 0) -> LogLine:
    text = f"line {i}".encode()
    return LogLine(T0 + dt.timedelta(milliseconds=i), 1 + i % 2, text + b"x" * max(0, size - len(text)))


class MemoryLogs:
    """A LogSource in memory. Like FileLogSource, a task without lines yields nothing; a task in
    `failing` raises NotFound. `finished` receives the task id whenever a read ends (closed)."""

    def __init__(self) -> None:
        self.lines: dict[str, list[LogLine]] = {}
        self.failing: set[str] = set()
        self.finished: asyncio.Queue[str] = asyncio.Queue()
        self._changed = asyncio.Condition()

    async def append(self, task_id: str, *new: LogLine) -> None:
        async with self._changed:
            self.lines.setdefault(task_id, []).extend(new)
            self._changed.notify_all()

    async def read(self, task_id: str, *, tail: int | None, since: dt.datetime | None,
                   follow: bool) -> AsyncIterator[LogLine]:
        try:
            if task_id in self.failing:
                raise NotFound(f"no logs for task {task_id}")
            current = self.lines.get(task_id, [])
            selected = [ln for ln in current if since is None or ln.timestamp > since]
            if tail is not None:
                selected = selected[len(selected) - tail:] if tail else []
            seen = len(current)
            for ln in selected:
                yield ln
            while follow:
                async with self._changed:
                    await self._changed.wait_for(functools.partial(self._more, task_id, seen))
                    new = self.lines[task_id][seen:]
                seen += len(new)
                for ln in new:
                    yield ln
        finally:
            self.finished.put_nowait(task_id)

    def _more(self, task_id: str, seen: int) -> bool:
        return len(self.lines.get(task_id, [])) > seen

    async def next_finished(self) -> str:
        return await asyncio.wait_for(self.finished.get(), DEADLINE_S)


def make_task(task_id: str, node_id: str = "n1") -> Task:
    return Task(id=task_id, service_id="svc", slot=1, node_id=node_id, desired_state=TaskState.RUNNING,
                spec=TaskSpec(container_spec=ContainerSpec(image="busybox")),
                status=TaskStatus(state=TaskState.ASSIGNED))


@dataclass
class Rig:
    store: SqliteStore
    dispatcher: Dispatcher
    agent: Agent
    logs: MemoryLogs
    source: ClusterLogSource
    served: asyncio.Task[None]
    session: asyncio.Task[None]

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

    async def until_running(self, task_id: str) -> None:
        await self.until(lambda tx: (t := tx.get(Task, task_id)) is not None
                         and t.status.state == TaskState.RUNNING)

    async def read_all(self, task_id: str, *, tail: int | None = None,
                       since: dt.datetime | None = None) -> list[LogLine]:
        async def collect() -> list[LogLine]:
            return [ln async for ln in self.source.read(task_id, tail=tail, since=since, follow=False)]
        return await asyncio.wait_for(collect(), DEADLINE_S)

    async def close(self) -> None:
        await self.agent.stop(shutdown_tasks=False)
        await asyncio.wait_for(self.session, DEADLINE_S)
        await asyncio.wait_for(self.served, DEADLINE_S)
        await self.dispatcher.stop()
        await self.store.close()


async def _rig(tmp_path: Path, *, serve_logs: bool = True, buffer_bytes: int | None = None) -> Rig:
    store = SqliteStore(":memory:")
    await store.open()

    def seed(tx: WriteTx) -> None:
        period = DispatcherConfig(heartbeat_period=1_000_000_000)
        tx.create(Cluster(id="c1", spec=SwarmSpec(dispatcher=period)))
        for node_id in ("n1", "n2"):
            tx.create(Node(id=node_id, spec=NodeSpec(role="worker", availability="active")))
        tx.create(make_task("t1"))
        tx.create(make_task("t-n2", node_id="n2"))

    await store.update(seed)
    clock = SystemClock()
    extra = {} if buffer_bytes is None else {"logs_buffer_bytes": buffer_bytes}
    dispatcher = Dispatcher(store, clock, batch_s=0.005, **extra)
    await dispatcher.start()
    manager_sock, agent_sock = socket.socketpair()
    served = asyncio.create_task(dispatcher.serve(*await asyncio.open_connection(sock=manager_sock)))
    logs = MemoryLogs()
    agent = Agent(FakeExecutor(), node_id="n1", state_dir=tmp_path,
                  description=NodeDescription(hostname="h1"), clock=clock, logs=logs if serve_logs else None)
    session = asyncio.create_task(agent.run_session(*await asyncio.open_connection(sock=agent_sock)))
    rig = Rig(store, dispatcher, agent, logs, ClusterLogSource(store, dispatcher), served, session)
    await rig.until_running("t1")  # the agent's statuses are applied: its session is up
    return rig


def run(tmp_path: Path, scenario: Callable[[Rig], Coroutine[Any, Any, None]], **kwargs: Any) -> None:
    async def main() -> None:
        rig = await _rig(tmp_path, **kwargs)
        try:
            await scenario(rig)
        finally:
            await rig.close()
    asyncio.run(main())


async def anext_within(lines: AsyncIterator[LogLine]) -> LogLine:
    return await asyncio.wait_for(anext(lines), DEADLINE_S)


def test_non_follow_read_returns_every_line_in_order(tmp_path: Path) -> None:
    expected = [line(i) for i in range(250)] + [line(250 + i, size=20_000) for i in range(10)]

    async def scenario(rig: Rig) -> None:
        await rig.logs.append("t1", *expected)
        got = await rig.read_all("t1")
        assert got == expected  # timestamps (to the microsecond), streams and messages
        assert {ln.stream for ln in got} == {1, 2}
        assert await rig.logs.next_finished() == "t1"
    run(tmp_path, scenario)


def test_tail_and_since_reach_the_agent(tmp_path: Path) -> None:
    expected = [line(i) for i in range(20)]

    async def scenario(rig: Rig) -> None:
        await rig.logs.append("t1", *expected)
        assert await rig.read_all("t1", tail=3) == expected[-3:]
        assert await rig.read_all("t1", tail=0) == []
        assert await rig.read_all("t1", since=expected[14].timestamp) == expected[15:]
        assert await rig.read_all("t1", tail=2, since=expected[10].timestamp) == expected[18:]
    run(tmp_path, scenario)


def test_follow_streams_new_lines_and_cancelling_reaches_the_agent(tmp_path: Path) -> None:
    async def scenario(rig: Rig) -> None:
        await rig.logs.append("t1", line(0), line(1))
        received: asyncio.Queue[LogLine] = asyncio.Queue()

        async def consume() -> None:  # as the API server's pump does; it is cancelled at the end
            async for ln in rig.source.read("t1", tail=None, since=None, follow=True):
                received.put_nowait(ln)

        consumer = asyncio.create_task(consume())
        assert [await asyncio.wait_for(received.get(), DEADLINE_S) for _ in range(2)] == [line(0), line(1)]
        for i in (2, 3):
            await rig.logs.append("t1", line(i))
            assert await asyncio.wait_for(received.get(), DEADLINE_S) == line(i)
        consumer.cancel()
        with pytest.raises(asyncio.CancelledError):
            await consumer
        assert await rig.logs.next_finished() == "t1"  # LogsCancel ended the agent's read
    run(tmp_path, scenario)


def test_break_out_of_a_follow_cancels_it_on_the_agent(tmp_path: Path) -> None:
    async def scenario(rig: Rig) -> None:
        await rig.logs.append("t1", line(0))
        lines = rig.source.read("t1", tail=None, since=None, follow=True)
        assert await anext_within(lines) == line(0)
        await lines.aclose()  # what `break` in an aclosing() does
        assert await rig.logs.next_finished() == "t1"
        # The session still serves: a new request works.
        assert await rig.read_all("t1") == [line(0)]
    run(tmp_path, scenario)


def test_unknown_tasks_and_source_errors(tmp_path: Path) -> None:
    async def scenario(rig: Rig) -> None:
        with pytest.raises(NotFound, match="task nope not found"):
            await rig.read_all("nope")  # not in the store
        await rig.store.update(lambda tx: tx.create(make_task("t-quiet")))
        assert await rig.read_all("t-quiet") == []  # the source holds nothing for it: empty
        rig.logs.failing.add("t1")
        with pytest.raises(ShoalError) as caught:
            await rig.read_all("t1")
        assert type(caught.value) is ShoalError and caught.value.message == "no logs for task t1"
        await rig.store.update(lambda tx: tx.create(Task(id="t-new", service_id="svc")))
        assert await rig.read_all("t-new") == []  # not scheduled: no node to ask
    run(tmp_path, scenario)


def test_node_without_session(tmp_path: Path) -> None:
    async def scenario(rig: Rig) -> None:
        assert await rig.read_all("t-n2") == []  # documented: nothing without follow
        with pytest.raises(Unavailable, match="node n2 is not connected"):
            await anext_within(rig.source.read("t-n2", tail=None, since=None, follow=True))
    run(tmp_path, scenario)


def test_agent_without_a_log_source_answers_with_an_error(tmp_path: Path) -> None:
    async def scenario(rig: Rig) -> None:
        with pytest.raises(ShoalError, match=logserve.NO_SOURCE):
            await rig.read_all("t1")
    run(tmp_path, scenario, serve_logs=False)


def test_an_unread_follow_does_not_hold_back_statuses(tmp_path: Path) -> None:
    async def scenario(rig: Rig) -> None:
        await rig.logs.append("t1", line(0))
        lines = rig.source.read("t1", tail=None, since=None, follow=True)
        assert await anext_within(lines) == line(0)
        backlog = [line(i) for i in range(1, 501)]  # five full chunks, nobody reading them
        await rig.logs.append("t1", *backlog)
        await rig.store.update(lambda tx: tx.create(make_task("t2")))
        await rig.until_running("t2")  # the status batch got past the unread chunks
        assert [await anext_within(lines) for _ in backlog] == backlog
        await lines.aclose()
        assert await rig.logs.next_finished() == "t1"
    run(tmp_path, scenario)


def test_a_reader_too_slow_is_aborted_after_its_buffered_lines(tmp_path: Path) -> None:
    async def scenario(rig: Rig) -> None:
        await rig.logs.append("t1", line(0))
        lines = rig.source.read("t1", tail=None, since=None, follow=True)
        assert await anext_within(lines) == line(0)
        backlog = [line(i, size=100) for i in range(1, 2001)]
        await rig.logs.append("t1", *backlog)
        assert await rig.logs.next_finished() == "t1"  # the overflow sent LogsCancel
        await rig.store.update(lambda tx: tx.create(make_task("t2")))
        await rig.until_running("t2")
        got: list[LogLine] = []
        with pytest.raises(Unavailable, match="reader too slow"):
            while True:
                got.append(await anext_within(lines))
        assert 0 < len(got) < len(backlog) and got == backlog[:len(got)]
    run(tmp_path, scenario, buffer_bytes=8 * 1024)


def test_session_end_ends_an_open_follow(tmp_path: Path) -> None:
    async def scenario(rig: Rig) -> None:
        await rig.logs.append("t1", line(0))
        lines = rig.source.read("t1", tail=None, since=None, follow=True)
        assert await anext_within(lines) == line(0)
        await rig.agent.stop(shutdown_tasks=False)
        assert await rig.logs.next_finished() == "t1"  # the agent cancelled its reads
        with pytest.raises(Unavailable, match="session ended"):
            await anext_within(lines)
    run(tmp_path, scenario)


# ------------------------------------------------------------------------- LogServer on its own
class Sent:
    def __init__(self) -> None:
        self.chunks: asyncio.Queue[proto.LogsChunk] = asyncio.Queue()

    async def send(self, message: proto.Message) -> None:
        assert isinstance(message, proto.LogsChunk)
        self.chunks.put_nowait(message)

    async def next(self) -> proto.LogsChunk:
        return await asyncio.wait_for(self.chunks.get(), DEADLINE_S)


async def _served(source: LogSource, request: proto.LogsRequest) -> list[proto.LogsChunk]:
    sent = Sent()
    server = logserve.LogServer(source, sent.send)
    server.handle(request)
    chunks = [await sent.next()]
    while not chunks[-1].done:
        chunks.append(await sent.next())
    await server.close()
    return chunks


def test_chunks_hold_at_most_100_lines_or_64_kib() -> None:
    async def scenario() -> None:
        logs = MemoryLogs()
        await logs.append("a", *[line(i) for i in range(250)])
        await logs.append("b", *[line(i, size=20_000) for i in range(10)])
        chunks = await _served(logs, proto.LogsRequest(request_id=1, task_id="a"))
        assert [len(c.lines) for c in chunks] == [100, 100, 50] and chunks[-1].error == ""
        assert [ln.message for c in chunks for ln in c.lines] == [line(i).message for i in range(250)]
        chunks = await _served(logs, proto.LogsRequest(request_id=2, task_id="b"))
        assert all(sum(len(ln.message) for ln in c.lines) <= logserve.MAX_CHUNK_BYTES for c in chunks)
        assert sum(len(c.lines) for c in chunks) == 10 and len(chunks) == 4
    asyncio.run(scenario())


def test_a_follower_gets_each_new_line_promptly_and_cancel_sends_no_final_chunk() -> None:
    async def scenario() -> None:
        logs, sent = MemoryLogs(), Sent()
        server = logserve.LogServer(logs, sent.send)
        server.handle(proto.LogsRequest(request_id=7, task_id="a", follow=True))
        for i in range(3):
            await logs.append("a", line(i))
            chunk = await sent.next()  # flushed by the 50 ms timer, not by a full chunk
            assert (chunk.request_id, chunk.done, [ln.message for ln in chunk.lines]) == (
                7, False, [line(i).message])
        server.handle(proto.LogsCancel(request_id=7))
        assert await logs.next_finished() == "a"
        await server.close()
        assert sent.chunks.empty() and server.active() == 0
    asyncio.run(scenario())


def test_an_error_of_the_source_ends_the_request_with_its_message() -> None:
    async def scenario() -> None:
        logs = MemoryLogs()
        logs.failing.add("a")
        chunks = await _served(logs, proto.LogsRequest(request_id=1, task_id="a"))
        assert [(c.done, c.error, c.lines) for c in chunks] == [(True, "no logs for task a", [])]
    asyncio.run(scenario())

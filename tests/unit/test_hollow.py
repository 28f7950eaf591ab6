"""The hollow agent (bench/hollow.py) against a real Dispatcher over a socket pair."""

from __future__ import annotations

import asyncio
import socket
from collections.abc import Callable

from bench.hollow import HollowAgent, hollow_description
from shoal.api.clock import SystemClock
from shoal.api.states import TaskState
from shoal.api.types import Cluster, DispatcherConfig, Node, NodeSpec, SwarmSpec, Task, TaskStatus
from shoal.manager.dispatcher.dispatcher import Dispatcher
from shoal.store.protocol import ReadTx, WriteTx
from shoal.store.sqlite import SqliteStore

PERIOD_NS = 50_000_000  # 50 ms, so that several heartbeats fit in a fast test
DEADLINE_S = 5.0


def _task(tid: str, state: TaskState, desired: TaskState = TaskState.RUNNING) -> Task:
    return Task(id=tid, service_id="svc", slot=1, node_id="n1", status=TaskStatus(state=state),
                desired_state=desired)


async def _until(store: SqliteStore, predicate: Callable[[ReadTx], bool]) -> None:
    async def wait() -> None:
        while not predicate(store.view()):
            await asyncio.sleep(0.005)
    await asyncio.wait_for(wait(), DEADLINE_S)


def _state(tx: ReadTx, tid: str) -> TaskState | None:
    task = tx.get(Task, tid)
    return task.status.state if task else None


def test_hollow_agent_registers_runs_stops_and_heartbeats() -> None:
    async def scenario() -> None:
        store = SqliteStore(":memory:")
        await store.open()

        def seed(tx: WriteTx) -> None:
            spec = SwarmSpec(dispatcher=DispatcherConfig(heartbeat_period=PERIOD_NS))
            tx.create(Cluster(id="c1", spec=spec))
            tx.create(Node(id="n1", spec=NodeSpec(role="worker", availability="active")))
            tx.create(_task("t-run", TaskState.ASSIGNED))
            tx.create(_task("t-stop", TaskState.RUNNING, desired=TaskState.SHUTDOWN))

        await store.update(seed)
        dispatcher = Dispatcher(store, SystemClock(), batch_s=0.005)
        await dispatcher.start()
        manager_sock, agent_sock = socket.socketpair()
        m_reader, m_writer = await asyncio.open_connection(sock=manager_sock)
        served = asyncio.create_task(dispatcher.serve(m_reader, m_writer))
        reader, writer = await asyncio.open_connection(sock=agent_sock)
        agent = HollowAgent("n1", hollow_description("hollow-1"), addr="10.9.0.1")
        session = asyncio.create_task(agent.run_session(reader, writer))
        try:
            await asyncio.wait_for(agent.registered.wait(), DEADLINE_S)
            assert agent.period_s == PERIOD_NS / 1e9
            await _until(store, lambda tx: _state(tx, "t-run") == TaskState.RUNNING
                         and _state(tx, "t-stop") == TaskState.SHUTDOWN)
            running = store.view().get(Task, "t-run")
            assert running is not None and running.status.container_status is not None
            assert running.status.container_status.pid > 0
            node = store.view().get(Node, "n1")
            assert node is not None and (node.status.state, node.status.addr) == ("ready", "10.9.0.1")
            assert node.description.hostname == "hollow-1"

            # A task assigned later runs too; a deleted one is forgotten.
            await store.update(lambda tx: tx.create(_task("t-late", TaskState.ASSIGNED)))
            await _until(store, lambda tx: _state(tx, "t-late") == TaskState.RUNNING)
            await store.update(lambda tx: tx.delete(Task, "t-stop"))
            await _until(store, lambda tx: "t-stop" not in agent.statuses)

            # Heartbeats keep the node alive past 3 periods of the dispatcher's deadline.
            await asyncio.sleep(8 * PERIOD_NS / 1e9)
            assert await dispatcher.check_heartbeats() == []
            assert agent.frames_out >= 5  # register, statuses and several heartbeats
        finally:
            agent.stop()
            await asyncio.wait_for(session, DEADLINE_S)
            await asyncio.wait_for(served, DEADLINE_S)
            await dispatcher.stop()
            await store.close()

    asyncio.run(scenario())

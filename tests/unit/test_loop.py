"""The reconcile loop (shoal/manager/loop.py) and the orchestrator driven by it over a real store."""

from __future__ import annotations

import asyncio
import datetime as dt
import heapq
import itertools
from collections.abc import Awaitable, Callable

import msgspec
import pytest

from shoal.api.clock import SystemClock
from shoal.api.states import TaskState
from shoal.api.types import (
    ContainerSpec,
    ReplicatedService,
    RestartPolicy,
    Service,
    ServiceMode,
    ServiceSpec,
    Task,
    TaskSpec,
    TaskStatus,
)
from shoal.manager.loop import ReconcileLoop, backoff_s
from shoal.manager.orchestrator.component import Orchestrator
from shoal.store.protocol import WriteTx
from shoal.store.sqlite import SqliteStore


class FakeClock:
    """Time moves only by `advance`; sleepers wake when their deadline is reached."""

    def __init__(self) -> None:
        self._now = 0.0
        self._sleepers: list[tuple[float, int, asyncio.Future[None]]] = []
        self._seq = itertools.count()

    def now(self) -> dt.datetime:
        return dt.datetime(2024, 1, 1, tzinfo=dt.UTC) + dt.timedelta(seconds=self._now)

    def monotonic(self) -> float:
        return self._now

    async def sleep(self, seconds: float) -> None:
        fut: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        heapq.heappush(self._sleepers, (self._now + seconds, next(self._seq), fut))
        await fut

    def advance(self, seconds: float) -> None:
        self._now += seconds
        while self._sleepers and self._sleepers[0][0] <= self._now:
            _, _, fut = heapq.heappop(self._sleepers)
            if not fut.done():
                fut.set_result(None)


async def until(cond: Callable[[], bool], timeout_s: float = 5.0) -> None:
    """Poll `cond` (yielding to the loop) until true; fail after `timeout_s` of real time."""
    deadline = asyncio.get_running_loop().time() + timeout_s
    while not cond():
        if asyncio.get_running_loop().time() > deadline:
            raise AssertionError("condition not met before the deadline")
        await asyncio.sleep(0.001)


async def settle() -> None:
    """Let every ready callback run (for asserting that something did *not* happen)."""
    for _ in range(50):
        await asyncio.sleep(0)


def run(main: Callable[[], Awaitable[None]]) -> None:
    asyncio.run(asyncio.wait_for(main(), 20))


@pytest.mark.parametrize(("failures", "expected"), [(1, 0.05), (2, 0.1), (4, 0.4), (8, 5.0), (50, 5.0)])
def test_backoff_doubles_and_caps(failures: int, expected: float) -> None:
    assert backoff_s(failures) == pytest.approx(expected)


def test_marks_coalesce() -> None:
    calls: list[str] = []

    async def reconcile(key: str) -> float | None:
        calls.append(key)
        return None

    async def main() -> None:
        loop = ReconcileLoop("t", reconcile, FakeClock())
        for key in ("a", "b", "a", "a"):
            loop.mark(key)
        await loop.start()
        await until(lambda: loop.runs == 2)
        await settle()
        await loop.stop()
        assert calls == ["a", "b"]

    run(main)


def test_a_key_marked_while_running_runs_again_never_concurrently() -> None:
    calls: list[str] = []
    active: set[str] = set()
    release = asyncio.Event()

    async def reconcile(key: str) -> float | None:
        assert key not in active, "two reconciles of one key at once"
        active.add(key)
        calls.append(key)
        if len(calls) == 1:
            await release.wait()
        active.discard(key)
        return None

    async def main() -> None:
        loop = ReconcileLoop("t", reconcile, FakeClock(), concurrency=2)
        await loop.start()
        loop.mark("a")
        await until(lambda: calls == ["a"])
        loop.mark("a")
        loop.mark("a")
        await settle()
        assert calls == ["a"]  # the second worker must not take "a" while it runs
        release.set()
        await until(lambda: loop.runs == 2)
        await settle()
        await loop.stop()
        assert calls == ["a", "a"]

    run(main)


def test_a_returned_delay_reruns_the_key_then() -> None:
    calls: list[str] = []

    async def reconcile(key: str) -> float | None:
        calls.append(key)
        return 3.0 if len(calls) == 1 else None

    async def main() -> None:
        clock = FakeClock()
        loop = ReconcileLoop("t", reconcile, clock)
        await loop.start()
        loop.mark("k")
        await until(lambda: loop.runs == 1)
        clock.advance(2.9)
        await settle()
        assert calls == ["k"]
        clock.advance(0.1)
        await until(lambda: loop.runs == 2)
        clock.advance(100)
        await settle()
        await loop.stop()
        assert calls == ["k", "k"]

    run(main)


def test_errors_are_retried_with_backoff() -> None:
    calls: list[float] = []
    clock = FakeClock()

    async def reconcile(key: str) -> float | None:
        calls.append(clock.monotonic())
        if len(calls) < 3:
            raise RuntimeError("boom")
        return None

    async def main() -> None:
        loop = ReconcileLoop("t", reconcile, clock)
        await loop.start()
        loop.mark("k")
        await until(lambda: loop.runs == 1)
        clock.advance(0.05)
        await until(lambda: loop.runs == 2)
        clock.advance(0.05)
        await settle()
        assert len(calls) == 2  # the second retry waits twice as long
        clock.advance(0.05)
        await until(lambda: loop.runs == 3)
        await loop.stop()
        assert calls == pytest.approx([0.0, 0.05, 0.15])

    run(main)


# ----------------------------------------------------------------------- orchestrator over a store
DELAY_S = 0.3


def service(replicas: int) -> Service:
    policy = RestartPolicy(condition="any", delay=int(DELAY_S * 1e9))
    spec = ServiceSpec(name="web", task_template=TaskSpec(container_spec=ContainerSpec(image="img"),
                                                          restart_policy=policy),
                       mode=ServiceMode(replicated=ReplicatedService(replicas=replicas)))
    return Service(id="svc1", spec=spec)


def tasks_of(store: SqliteStore) -> list[Task]:
    return sorted(store.view().tasks_of_service("svc1"), key=lambda t: (t.slot, t.created_at))


def test_orchestrator_creates_restarts_and_removes() -> None:
    async def main() -> None:
        store = SqliteStore(":memory:")
        await store.open()
        orch = Orchestrator(store, SystemClock())
        await orch.start()
        try:
            await store.update(lambda tx: tx.create(service(2)))
            await until(lambda: len(tasks_of(store)) == 2)
            assert [t.slot for t in tasks_of(store)] == [1, 2]

            victim = tasks_of(store)[0]
            failed_at = dt.datetime.now(dt.UTC)
            failed = msgspec.structs.replace(
                victim, status=TaskStatus(state=TaskState.FAILED, timestamp=failed_at, message="exit 1"))
            await store.update(lambda tx: tx.update(failed))
            await until(lambda: len(tasks_of(store)) == 3)
            replaced_after_s = (dt.datetime.now(dt.UTC) - failed_at).total_seconds()
            assert replaced_after_s >= DELAY_S * 0.9  # the restart delay was honoured
            slot1 = [t for t in tasks_of(store) if t.slot == 1]
            assert [t.desired_state for t in slot1] == [TaskState.SHUTDOWN, TaskState.RUNNING]
            assert slot1[1].restart_count == 1

            await store.update(lambda tx: tx.delete(Service, "svc1"))
            # The tasks never reached an agent (state NEW), so they are deleted at once.
            await until(lambda: not tasks_of(store))
        finally:
            await orch.stop()
            await store.close()

    run(main)


def scale_to_one(tx: WriteTx) -> Service:
    current = tx.get(Service, "svc1")
    assert current is not None
    return tx.update(msgspec.structs.replace(service(1), version=current.version))


def test_orchestrator_start_reconciles_what_is_already_stored() -> None:
    async def main() -> None:
        store = SqliteStore(":memory:")
        await store.open()
        await store.update(lambda tx: tx.create(service(3)))
        orch = Orchestrator(store, SystemClock())
        await orch.start()
        try:
            await until(lambda: len(tasks_of(store)) == 3)
            await store.update(scale_to_one)
            await until(lambda: len(tasks_of(store)) == 1)
        finally:
            await orch.stop()
            await store.close()

    run(main)

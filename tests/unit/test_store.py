"""SqliteStore (shoal/store/sqlite.py): transactions, versions, indexes, durability and watches.

Async code is driven with asyncio.run (pytest-asyncio is not a dependency). Waits on watches use
asyncio.wait_for with a deadline, never sleeps.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import os
import signal
import subprocess
import sys
import textwrap
from collections.abc import Callable, Coroutine, Iterable
from functools import partial
from pathlib import Path
from typing import Any, TypeVar

import pytest

from shoal.api.errors import Conflict, NotFound, SequenceConflict
from shoal.api.types import (
    Cluster,
    Node,
    NodeDescription,
    Service,
    ServiceSpec,
    Task,
    Version,
)
from shoal.store.protocol import Change, Compacted, WriteTx
from shoal.store.sqlite import SqliteStore

R = TypeVar("R")
T0 = dt.datetime(2030, 1, 2, 3, 4, 5, tzinfo=dt.UTC)


class StepClock:
    """A clock that advances one second per reading, so timestamps tell transactions apart."""

    def __init__(self) -> None:
        self.t = T0

    def now(self) -> dt.datetime:
        self.t += dt.timedelta(seconds=1)
        return self.t

    def monotonic(self) -> float:
        return 0.0

    async def sleep(self, seconds: float) -> None:
        await asyncio.sleep(0)


def run(fn: Callable[[SqliteStore], Coroutine[Any, Any, R]], path: Path | str = ":memory:",
        **kw: Any) -> R:
    """Open a store at `path`, run `fn(store)` on a fresh event loop, close the store."""
    async def main() -> R:
        store = SqliteStore(path, clock=StepClock(), **kw)
        await store.open()
        try:
            return await fn(store)
        finally:
            await store.close()
    return asyncio.run(main())


async def next_changes(it: Any, timeout: float = 5.0) -> list[Change]:
    result: list[Change] = await asyncio.wait_for(it.__anext__(), timeout)
    return result


def svc(id: str, name: str) -> Service:
    return Service(id=id, spec=ServiceSpec(name=name))


def task(id: str, service_id: str = "s1", node_id: str = "") -> Task:
    return Task(id=id, service_id=service_id, node_id=node_id)


def node(id: str, hostname: str) -> Node:
    return Node(id=id, description=NodeDescription(hostname=hostname))


def create_tasks(ids: list[str], tx: WriteTx) -> None:
    for id in ids:
        tx.create(task(id))


# ------------------------------------------------------------------------------------------- writes
def test_create_stamps_version_and_times_and_is_readable() -> None:
    async def body(store: SqliteStore) -> None:
        created = await store.update(lambda tx: tx.create(svc("s1", "web")))
        assert created.version == Version(index=1)
        assert created.created_at == created.updated_at > T0
        view = store.view()
        assert view.revision == store.revision == 1
        assert view.get(Service, "s1") is created  # the frozen struct itself, no copy
        assert list(view.list(Service)) == [created]
        assert view.get(Service, "nope") is None
    run(body)


def test_update_bumps_version_keeps_created_at_and_stale_update_conflicts() -> None:
    async def body(store: SqliteStore) -> None:
        v1 = await store.update(lambda tx: tx.create(svc("s1", "web")))
        await store.update(lambda tx: tx.create(task("t1")))  # revision 2: versions are global
        renamed = Service(id="s1", version=v1.version, spec=ServiceSpec(name="api"))
        v3 = await store.update(lambda tx: tx.update(renamed))
        assert v3.version.index == 3
        assert v3.created_at == v1.created_at and v3.updated_at > v1.updated_at
        with pytest.raises(SequenceConflict) as err:
            await store.update(lambda tx: tx.update(v1))  # still carries Version 1
        assert "update out of sequence" in err.value.message
        assert err.value.status == 500
        assert store.view().get(Service, "s1") is v3
        assert store.revision == 3
    run(body)


def test_create_existing_update_or_delete_missing_are_refused() -> None:
    async def body(store: SqliteStore) -> None:
        await store.update(lambda tx: tx.create(svc("s1", "web")))
        with pytest.raises(Conflict):
            await store.update(lambda tx: tx.create(svc("s1", "other")))
        with pytest.raises(NotFound):
            await store.update(lambda tx: tx.update(svc("s2", "x")))
        with pytest.raises(NotFound):
            await store.update(lambda tx: tx.delete(Service, "s2"))
        with pytest.raises(Conflict, match="service WEB already exists"):
            await store.update(lambda tx: tx.create(svc("s3", "WEB")))  # names are unique, any case
        await store.update(lambda tx: tx.delete(Service, "s1"))
        assert store.view().get(Service, "s1") is None
        assert store.revision == 2
    run(body)


def test_failed_transaction_changes_nothing_and_notifies_no_one() -> None:
    async def body(store: SqliteStore) -> None:
        await store.update(lambda tx: tx.create(svc("s1", "web")))
        watch = store.watch()

        def half_then_fail(tx: WriteTx) -> None:
            tx.create(task("t1", "s1"))
            tx.delete(Service, "s1")
            raise RuntimeError("boom")

        with pytest.raises(RuntimeError, match="boom"):
            await store.update(half_then_fail)
        view = store.view()
        assert view.revision == 1
        assert view.get(Task, "t1") is None and view.get(Service, "s1") is not None
        assert list(view.tasks_of_service("s1")) == []
        await store.update(lambda tx: tx.create(task("t2", "s1")))
        first = await next_changes(watch)  # the failed transaction never reached the watch
        assert [(c.action, c.obj.id, c.revision) for c in first] == [("create", "t2", 2)]
    run(body)


def test_transaction_without_net_change_keeps_the_revision() -> None:
    async def body(store: SqliteStore) -> None:
        def create_then_delete(tx: WriteTx) -> int:
            tx.create(task("t1"))
            tx.delete(Task, "t1")
            return 7
        assert await store.update(create_then_delete) == 7
        assert await store.update(lambda tx: tx.get(Task, "t1")) is None
        assert store.revision == 0
    run(body)


# ------------------------------------------------------------------------------------------ indexes
def test_reads_inside_a_transaction_see_its_own_writes_through_the_indexes() -> None:
    async def body(store: SqliteStore) -> None:
        await store.update(lambda tx: [tx.create(task(f"t{i}", "s1", "n1")) for i in range(3)])

        def move(tx: WriteTx) -> tuple[set[str], set[str], set[str], set[str]]:
            t0 = tx.get(Task, "t0")
            assert t0 is not None
            tx.update(Task(id="t0", version=t0.version, service_id="s2", node_id="n2"))
            tx.delete(Task, "t1")
            tx.create(task("t9", "s1", "n2"))
            def ids(ts: Iterable[Task]) -> set[str]:
                return {t.id for t in ts}

            return (ids(tx.tasks_of_service("s1")), ids(tx.tasks_of_service("s2")),
                    ids(tx.tasks_of_node("n1")), ids(tx.tasks_of_node("n2")))

        inside = await store.update(move)
        assert inside == ({"t2", "t9"}, {"t0"}, {"t2"}, {"t0", "t9"})
        view = store.view()
        after = tuple({t.id for t in ts} for ts in (
            view.tasks_of_service("s1"), view.tasks_of_service("s2"),
            view.tasks_of_node("n1"), view.tasks_of_node("n2")))
        assert after == inside
        assert {t.id for t in view.list(Task)} == {"t0", "t2", "t9"}
    run(body)


def test_find_by_name_matches_service_name_and_node_hostname() -> None:
    async def body(store: SqliteStore) -> None:
        await store.update(lambda tx: (tx.create(svc("s1", "Web")), tx.create(node("n1", "box-a")),
                                       tx.create(node("n2", "box-b"))))
        view = store.view()
        found = view.find_by_name(Service, "web")
        assert found is not None and found.id == "s1"
        host = view.find_by_name(Node, "box-b")
        assert host is not None and host.id == "n2"
        assert view.find_by_name(Service, "box-a") is None

        def rename(tx: WriteTx) -> str | None:
            s = tx.get(Service, "s1")
            assert s is not None
            tx.update(Service(id="s1", version=s.version, spec=ServiceSpec(name="api")))
            hit = tx.find_by_name(Service, "api")
            assert tx.find_by_name(Service, "web") is None
            return hit.id if hit else None

        assert await store.update(rename) == "s1"
        assert store.view().find_by_name(Service, "web") is None
        # The old name is free again.
        await store.update(lambda tx: tx.create(svc("s2", "web")))
    run(body)


# --------------------------------------------------------------------------------------- durability
def test_reopen_restores_objects_and_revision(tmp_path: Path) -> None:
    path = tmp_path / "sub" / "store.db"

    async def write(store: SqliteStore) -> dict[str, Any]:
        await store.update(lambda tx: (tx.create(svc("s1", "web")), tx.create(Cluster(id="c1"))))
        await store.update(lambda tx: [tx.create(task(f"t{i}", "s1", "n1")) for i in range(5)])
        await store.update(lambda tx: tx.delete(Task, "t4"))
        view = store.view()
        return {"rev": view.revision, "tasks": {t.id: t for t in view.list(Task)},
                "svc": view.get(Service, "s1")}

    before = run(write, path)
    assert path.exists()

    async def read(store: SqliteStore) -> None:
        view = store.view()
        assert view.revision == before["rev"] == 3
        assert {t.id: t for t in view.list(Task)} == before["tasks"]
        assert view.get(Service, "s1") == before["svc"]
        assert {t.id for t in view.tasks_of_node("n1")} == {"t0", "t1", "t2", "t3"}
        assert view.find_by_name(Service, "web") is not None
        nxt = await store.update(lambda tx: tx.create(task("t9")))
        assert nxt.version.index == 4  # the revision continues, it does not restart at 1

    run(read, path)


CRASH_WRITER = textwrap.dedent("""
    import asyncio, sys
    from shoal.api.types import Cluster, Node
    from shoal.store.sqlite import SqliteStore

    async def main() -> None:
        store = SqliteStore(sys.argv[1])
        await store.open()
        i = 0
        while True:
            def step(tx, i=i):
                tx.create(Node(id=f"n{i}"))
                c = tx.get(Cluster, "c")
                if c is None:
                    tx.create(Cluster(id="c", default_addr_pool=[], subnet_size=i + 1))
                else:
                    tx.update(Cluster(id="c", version=c.version, subnet_size=i + 1))
            await store.update(step)
            print(store.revision, flush=True)
            i += 1

    asyncio.run(main())
""")


def test_kill_9_mid_stream_keeps_every_committed_write(tmp_path: Path) -> None:
    path = tmp_path / "store.db"
    proc = subprocess.Popen([sys.executable, "-c", CRASH_WRITER, str(path)], stdout=subprocess.PIPE,
                            text=True, env={**os.environ, "PYTHONPATH": str(Path.cwd())})
    assert proc.stdout is not None
    acknowledged = 0
    try:
        for line in proc.stdout:  # blocks on the child's output; ends if it dies
            acknowledged = int(line)
            if acknowledged >= 40:
                break
    finally:
        proc.send_signal(signal.SIGKILL)
        proc.wait(timeout=30)
    assert acknowledged >= 40, "the writer died before committing 40 transactions"

    async def check(store: SqliteStore) -> None:
        view = store.view()
        rev = view.revision
        assert rev >= acknowledged  # everything acknowledged is there
        nodes = {n.id for n in view.list(Node)}
        assert nodes == {f"n{i}" for i in range(rev)}  # and nothing half-written
        cluster = view.get(Cluster, "c")
        assert cluster is not None and cluster.subnet_size == rev and cluster.version.index == rev

    run(check, path)


# ------------------------------------------------------------------------------------------ watches
def test_watch_from_revision_replays_then_streams_live_changes() -> None:
    async def body(store: SqliteStore) -> None:
        await store.update(lambda tx: tx.create(svc("s1", "web")))  # rev 1
        await store.update(lambda tx: (tx.create(task("t1")), tx.create(task("t2"))))  # rev 2
        await store.update(lambda tx: tx.delete(Task, "t1"))  # rev 3
        watch = store.watch(from_revision=1)
        replay = [await next_changes(watch), await next_changes(watch)]
        assert [[(c.action, c.obj.id, c.revision) for c in chs] for chs in replay] == [
            [("create", "t1", 2), ("create", "t2", 2)], [("delete", "t1", 3)]]
        assert replay[1][0].obj.version.index == 2  # a delete carries the last stored value

        pending = asyncio.ensure_future(next_changes(watch))
        await store.update(lambda tx: tx.create(svc("s2", "api")))
        live = await pending
        assert [(c.action, c.obj.id, c.revision) for c in live] == [("create", "s2", 4)]

        watch.close()
        with pytest.raises(StopAsyncIteration):
            await next_changes(watch)
    run(body)


def test_watch_filters_kinds_and_close_ends_a_waiting_iteration() -> None:
    async def body(store: SqliteStore) -> None:
        watch = store.watch(kinds=(Service,))
        await store.update(lambda tx: tx.create(task("t1")))  # not a Service: never delivered
        await store.update(lambda tx: (tx.create(task("t2")), tx.create(svc("s1", "web"))))
        got = await next_changes(watch)
        assert [(c.action, c.obj.id) for c in got] == [("create", "s1")]

        async def drain() -> list[list[Change]]:
            return [chs async for chs in watch]

        draining = asyncio.ensure_future(drain())
        await asyncio.sleep(0)  # let the iteration start waiting (ordering only, not timing)
        watch.close()
        assert await asyncio.wait_for(draining, 5) == []
    run(body)


def test_view_and_watch_sees_every_later_change_exactly_once() -> None:
    async def body(store: SqliteStore) -> None:
        await store.update(lambda tx: [tx.create(task(f"t{i}")) for i in range(3)])

        async def writer() -> None:
            for i in range(3, 10):
                await store.update(partial(create_tasks, [f"t{i}"]))

        job = asyncio.ensure_future(writer())
        await asyncio.sleep(0)  # interleave with the writer
        ids, watch = store.view_and_watch(lambda v: {t.id for t in v.list(Task)})
        await job
        seen = set(ids)
        while len(seen) < 10:
            for c in await next_changes(watch):
                assert c.obj.id not in seen, "a change already in the snapshot was delivered"
                seen.add(c.obj.id)
        assert seen == {f"t{i}" for i in range(10)}
    run(body)


def test_watch_from_a_compacted_revision_raises_at_creation() -> None:
    async def body(store: SqliteStore) -> None:
        for i in range(6):
            await store.update(partial(create_tasks, [f"a{i}", f"b{i}"]))
        with pytest.raises(Compacted):
            store.watch(from_revision=1)  # ring keeps 4 changes: revisions 5 and 6
        watch = store.watch(from_revision=4)
        assert {c.obj.id for c in await next_changes(watch)} == {"a4", "b4"}
        watch.close()
        store.watch(from_revision=store.revision).close()  # "from now" is never compacted
    run(body, ring_changes=4)


def test_wipe_deletes_everything_and_tells_watchers() -> None:
    async def body(store: SqliteStore) -> None:
        await store.update(lambda tx: (tx.create(svc("s1", "web")), tx.create(task("t1", "s1", "n1")),
                                       tx.create(node("n1", "h"))))
        watch = store.watch()
        await store.wipe()
        view = store.view()
        assert all(not list(view.list(k)) for k in (Service, Task, Node, Cluster))
        assert list(view.tasks_of_node("n1")) == [] and view.find_by_name(Node, "h") is None
        assert {(c.action, c.obj.id) for c in await next_changes(watch)} == {
            ("delete", "s1"), ("delete", "t1"), ("delete", "n1")}
    run(body)


def test_hundred_thousand_tasks_in_one_transaction_are_indexed_and_survive_reopen(tmp_path: Path) -> None:
    """100k tasks in one commit (the scheduler's batch size at scale) land whole and indexed.
    How long it takes is measured in bench/bench_scheduler.py, not asserted here."""
    tasks = [task(f"t{i:06d}", f"s{i % 10}", f"n{i % 100}") for i in range(100_000)]

    async def write(store: SqliteStore) -> None:
        await store.update(lambda tx: [tx.create(t) for t in tasks])

    async def read(store: SqliteStore) -> None:
        assert len(list(store.view().tasks_of_service("s3"))) == 10_000
        assert len(list(store.view().tasks_of_node("n7"))) == 1_000

    run(write, tmp_path / "big.db")
    run(read, tmp_path / "big.db")



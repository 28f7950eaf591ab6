"""Scheduler: filters and their explanations, spread, reservations, constraints, preferences."""

from __future__ import annotations

import asyncio
from collections import Counter

import pytest

from shoal.api.clock import SystemClock
from shoal.api.states import TaskState
from shoal.api.types import (
    EngineDescription,
    Node,
    NodeDescription,
    NodeResources,
    NodeSpec,
    NodeStatus,
    Placement,
    PlacementPreference,
    Platform,
    Reservations,
    Resources,
    SpreadOver,
    Task,
    TaskSpec,
    TaskStatus,
)
from shoal.manager.allocator import Allocator
from shoal.manager.scheduler.constraints import Constraint, parse_constraint, satisfies
from shoal.manager.scheduler.filters import explain
from shoal.manager.scheduler.nodeinfo import NodeInfo, build_node_infos
from shoal.manager.scheduler.pipeline import schedule
from shoal.manager.scheduler.scheduler import ASSIGNED_MESSAGE, Scheduler
from shoal.store.protocol import ReadTx, WriteTx
from shoal.store.sqlite import SqliteStore

GIB = 1 << 30
CPU = 1_000_000_000


def node(nid: str, *, cpus: int = 4, mem_gib: int = 8, state: str = "ready", availability: str = "active",
         labels: dict[str, str] | None = None, role: str = "worker", hostname: str = "",
         engine_labels: dict[str, str] | None = None, os: str = "linux", arch: str = "x86_64") -> Node:
    return Node(
        id=nid,
        spec=NodeSpec(role=role, availability=availability, labels=labels),
        description=NodeDescription(
            hostname=hostname or f"host-{nid}",
            platform=Platform(os=os, architecture=arch),
            resources=NodeResources(nano_cpus=cpus * CPU, memory_bytes=mem_gib * GIB),
            engine=EngineDescription(labels=engine_labels),
        ),
        status=NodeStatus(state=state),
    )


def task(tid: str, *, service: str = "svc", slot: int = 1, cpu: int = 0, mem: int = 0,
         constraints: list[str] | None = None, max_replicas: int = 0, spread: list[str] | None = None,
         node_id: str = "", state: TaskState = TaskState.PENDING) -> Task:
    placement = Placement(
        constraints=constraints, max_replicas=max_replicas,
        preferences=[PlacementPreference(spread=SpreadOver(spread_descriptor=s)) for s in spread or []],
    )
    return Task(
        id=tid, service_id=service, slot=slot, node_id=node_id,
        spec=TaskSpec(resources=Resources(reservations=Reservations(nano_cpus=cpu, memory_bytes=mem)),
                      placement=placement),
        status=TaskStatus(state=state), desired_state=TaskState.RUNNING,
    )


def tasks(n: int, **kw: object) -> list[Task]:
    return [task(f"t{i:03d}", slot=i + 1, **kw) for i in range(n)]  # type: ignore[arg-type]


def infos(*nodes: Node, running: list[Task] | None = None) -> dict[str, NodeInfo]:
    return build_node_infos(nodes, running or [])


# -------------------------------------------------------------------------------------- explain
@pytest.mark.parametrize(("counts", "message"), [
    ({}, "no suitable node"),
    ({"not-ready": 1}, "no suitable node (1 node not available for new tasks)"),
    ({"not-ready": 3}, "no suitable node (3 nodes not available for new tasks)"),
    ({"memory": 2, "not-ready": 1},
     "no suitable node (1 node not available for new tasks; 2 nodes have insufficient memory)"),
    ({"cpu": 1}, "no suitable node (1 node has insufficient cpu)"),
    ({"constraints": 2}, "no suitable node (scheduling constraints not satisfied on 2 nodes)"),
    ({"constraints": 1}, "no suitable node (scheduling constraints not satisfied on 1 node)"),
    ({"max-replicas": 4}, "no suitable node (max replicas per node limit exceed)"),
    ({"platform": 1}, "no suitable node (unsupported platform on 1 node)"),
])
def test_explain(counts: dict[str, int], message: str) -> None:
    assert explain(counts) == message


# ---------------------------------------------------------------------------------- filters
@pytest.mark.parametrize(("nodes", "spec", "message"), [
    ([node("a", state="down")], {}, "no suitable node (1 node not available for new tasks)"),
    ([node("a", availability="drain"), node("b", availability="pause")], {},
     "no suitable node (2 nodes not available for new tasks)"),
    ([node("a", mem_gib=1), node("b", mem_gib=1), node("c", state="down")], {"mem": 2 * GIB},
     "no suitable node (1 node not available for new tasks; 2 nodes have insufficient memory)"),
    ([node("a", cpus=1)], {"cpu": 2 * CPU}, "no suitable node (1 node has insufficient cpu)"),
    ([node("a"), node("b")], {"constraints": ["node.role==manager"]},
     "no suitable node (scheduling constraints not satisfied on 2 nodes)"),
    ([node("a", os="windows")], {"constraints": ["node.platform.os==linux"]},
     "no suitable node (scheduling constraints not satisfied on 1 node)"),
    ([], {}, "no suitable node"),
])
def test_unplaceable_explanations(nodes: list[Node], spec: dict[str, object], message: str) -> None:
    decisions = schedule([task("t1", **spec)], infos(*nodes))  # type: ignore[arg-type]
    assert decisions.assigned == {}
    assert decisions.unplaceable == {"t1": message}


def test_max_replicas_exhausts_nodes_and_explains() -> None:
    decisions = schedule(tasks(5, max_replicas=2), infos(node("a"), node("b")))
    assert Counter(decisions.assigned.values()) == {"a": 2, "b": 2}
    assert decisions.unplaceable == {"t004": "no suitable node (max replicas per node limit exceed)"}


def test_reservations_never_exceeded_and_rest_explained() -> None:
    # Each node fits 3 tasks of 1 GiB out of 3 GiB; 7 tasks: 6 placed, 1 explained.
    decisions = schedule(tasks(7, mem=GIB), infos(node("a", mem_gib=3), node("b", mem_gib=3)))
    assert Counter(decisions.assigned.values()) == {"a": 3, "b": 3}
    assert decisions.unplaceable == {"t006": "no suitable node (2 nodes have insufficient memory)"}


def test_existing_reservations_count() -> None:
    running = [task("r1", service="other", mem=3 * GIB, node_id="a", state=TaskState.RUNNING)]
    decisions = schedule(tasks(2, mem=GIB), infos(node("a", mem_gib=3), node("b", mem_gib=3),
                                                  running=running))
    assert set(decisions.assigned.values()) == {"b"}


def test_schedule_does_not_mutate_its_input() -> None:
    nodes = infos(node("a"), node("b"))
    schedule(tasks(4, mem=GIB), nodes)
    assert all(i.active_tasks == 0 and i.available_memory_bytes == 8 * GIB for i in nodes.values())


# ------------------------------------------------------------------------------------ spread
@pytest.mark.parametrize(("n_nodes", "n_tasks"), [(1, 3), (3, 3), (3, 7), (5, 23), (10, 100)])
def test_spread_is_even(n_nodes: int, n_tasks: int) -> None:
    decisions = schedule(tasks(n_tasks), infos(*(node(f"n{i}") for i in range(n_nodes))))
    counts = Counter(decisions.assigned.values())
    assert sum(counts.values()) == n_tasks
    assert max(counts.values()) - min(counts.get(f"n{i}", 0) for i in range(n_nodes)) <= 1


def test_spread_prefers_nodes_with_fewer_tasks_of_the_service_then_fewer_tasks() -> None:
    running = [task("r1", node_id="a", state=TaskState.RUNNING),
               task("r2", service="other", node_id="b", state=TaskState.RUNNING)]
    decisions = schedule([task("t1")], infos(node("a"), node("b"), node("c"), running=running))
    assert decisions.assigned == {"t1": "c"}


def test_tie_break_is_node_id() -> None:
    assert schedule([task("t1")], infos(node("b"), node("a"), node("c"))).assigned == {"t1": "a"}


# ------------------------------------------------------------------------------- constraints
@pytest.mark.parametrize(("text", "expected"), [
    ("node.role==manager", Constraint("node.role", "==", "manager")),
    ("node.labels.zone != eu-1", Constraint("node.labels.zone", "!=", "eu-1")),
    ("engine.labels.ssd==true", Constraint("engine.labels.ssd", "==", "true")),
])
def test_parse_constraint(text: str, expected: Constraint) -> None:
    assert parse_constraint(text) == expected


@pytest.mark.parametrize("text", ["node.role", "==x", "node.role==", "a==b==c"])
def test_parse_constraint_refuses(text: str) -> None:
    with pytest.raises(ValueError):
        parse_constraint(text)


LABELLED = node("n1", labels={"zone": "eu"}, role="manager", hostname="alpha", engine_labels={"ssd": "yes"},
                arch="aarch64")


@pytest.mark.parametrize(("text", "ok"), [
    ("node.id==n1", True), ("node.id!=n1", False), ("node.hostname==ALPHA", True),
    ("node.role==manager", True), ("node.role==worker", False), ("node.platform.os==linux", True),
    ("node.platform.arch==arm64", True), ("node.platform.arch==amd64", False),
    ("node.labels.zone==eu", True), ("node.labels.zone!=eu", False), ("node.labels.rack==r1", False),
    ("node.labels.rack!=r1", True), ("engine.labels.ssd==yes", True), ("engine.labels.ssd==no", False),
])
def test_constraint_matching(text: str, ok: bool) -> None:
    assert satisfies(LABELLED, parse_constraint(text)) is ok


def test_constraints_select_nodes() -> None:
    nodes = infos(node("a", labels={"zone": "x"}), node("b", labels={"zone": "y"}), node("c"))
    decisions = schedule(tasks(4, constraints=["node.labels.zone==x"]), nodes)
    assert set(decisions.assigned.values()) == {"a"}


def test_invalid_constraint_places_nothing() -> None:
    decisions = schedule([task("t1", constraints=["bogus"])], infos(node("a")))
    message = "no suitable node (scheduling constraints not satisfied on 1 node)"
    assert decisions.unplaceable == {"t1": message}


# ------------------------------------------------------------------------------- preferences
def test_spread_preference_equalises_label_values() -> None:
    # Zone x has 3 nodes, zone y 1 node, one node has no zone: 6 tasks -> 2 per branch.
    nodes = infos(node("a", labels={"zone": "x"}), node("b", labels={"zone": "x"}),
                  node("c", labels={"zone": "x"}), node("d", labels={"zone": "y"}), node("e"))
    decisions = schedule(tasks(6, spread=["node.labels.zone"]), nodes)
    per_node = Counter(decisions.assigned.values())
    assert per_node["d"] == 2 and per_node["e"] == 2
    assert per_node["a"] + per_node["b"] + per_node["c"] == 2


def test_spread_preference_counts_existing_tasks_and_overflows_when_full() -> None:
    running = [task(f"r{i}", node_id="a", state=TaskState.RUNNING) for i in range(2)]
    nodes = infos(node("a", labels={"zone": "x"}), node("b", labels={"zone": "y"}, mem_gib=1),
                  running=running)
    decisions = schedule(tasks(3, mem=GIB, spread=["node.labels.zone"]), nodes)
    # y first (0 < 2), takes one, is then full; the rest go to x.
    assert Counter(decisions.assigned.values()) == {"b": 1, "a": 2}


def test_nested_preferences() -> None:
    nodes = infos(*(node(f"{dc}{rack}", labels={"dc": dc, "rack": rack}) for dc in "pq" for rack in "123"))
    decisions = schedule(tasks(6, spread=["node.labels.dc", "node.labels.rack"]), nodes)
    assert Counter(decisions.assigned.values()) == {n: 1 for n in ("p1", "p2", "p3", "q1", "q2", "q3")}


# ---------------------------------------------------------------------------- pre-assigned
@pytest.mark.parametrize(("target", "expected"), [
    (node("a"), {"assigned": {"g1": "a"}, "unplaceable": {}}),
    (node("a", state="down"),
     {"assigned": {}, "unplaceable": {"g1": "no suitable node (1 node not available for new tasks)"}}),
    (node("a", mem_gib=1),
     {"assigned": {}, "unplaceable": {"g1": "no suitable node (1 node has insufficient memory)"}}),
])
def test_preassigned(target: Node, expected: dict[str, dict[str, str]]) -> None:
    decisions = schedule([task("g1", node_id="a", mem=2 * GIB)], infos(target, node("b")))
    assert {"assigned": decisions.assigned, "unplaceable": decisions.unplaceable} == expected


def test_preassigned_to_unknown_node() -> None:
    assert schedule([task("g1", node_id="zz")], infos(node("a"))).unplaceable == {"g1": "no suitable node"}


# ------------------------------------------------------------------------------- node info
def test_node_info_counts_only_active_tasks_and_releases() -> None:
    info = NodeInfo.of(node("a"), [task("t1", mem=GIB, node_id="a", state=TaskState.RUNNING),
                                   task("t2", mem=GIB, node_id="a", state=TaskState.FAILED)])
    assert (info.active_tasks, info.available_memory_bytes) == (1, 7 * GIB)
    assert info.add_task(task("t1", mem=GIB, node_id="a", state=TaskState.RUNNING)) is False
    assert info.remove_task("t1") and info.available_memory_bytes == 8 * GIB
    assert info.service_counts == {}


# ------------------------------------------------------------------- components over a store
def test_allocator_and_scheduler_components_assign_and_explain() -> None:
    def new(tid: str, mem: int) -> Task:
        return task(tid, mem=mem, state=TaskState.NEW)

    def settled(tx: ReadTx) -> bool:
        states = {t.id: t.status for t in tx.list(Task)}
        return states["big"].err != "" and all(
            states[f"t{i}"].state == TaskState.ASSIGNED for i in range(4))

    async def scenario() -> None:
        store = SqliteStore(":memory:")
        await store.open()

        def seed(tx: WriteTx) -> None:
            for n in (node("a", mem_gib=2), node("b", mem_gib=2)):
                tx.create(n)
            for t in [new(f"t{i}", GIB) for i in range(4)] + [new("big", 4 * GIB)]:
                tx.create(t)

        await store.update(seed)
        clock = SystemClock()
        components: list[Allocator | Scheduler] = [Allocator(store, clock), Scheduler(store, clock)]
        watch = store.watch()
        for c in components:
            await c.start()

        async def wait() -> None:
            if not settled(store.view()):
                async for _ in watch:
                    if settled(store.view()):
                        return
        await asyncio.wait_for(wait(), 5)
        watch.close()
        view = store.view()
        placed = [view.get(Task, f"t{i}") for i in range(4)]
        assert Counter(t.node_id for t in placed if t) == {"a": 2, "b": 2}
        assert all(t and t.status.message == ASSIGNED_MESSAGE for t in placed)
        big = view.get(Task, "big")
        assert big is not None and big.status.state == TaskState.PENDING
        assert big.status.err == "no suitable node (2 nodes have insufficient memory)"
        for c in reversed(components):
            await c.stop()
        await store.close()

    asyncio.run(scenario())

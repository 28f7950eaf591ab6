"""Plan tables for the replicated and global orchestrators (shoal/manager/orchestrator/)."""

from __future__ import annotations

import datetime as dt
import itertools
from collections.abc import Callable
from typing import Any

import pytest

from shoal.api.states import TaskState
from shoal.api.types import (
    ContainerSpec,
    GlobalService,
    Node,
    NodeSpec,
    NodeStatus,
    Placement,
    ReplicatedService,
    RestartPolicy,
    Service,
    ServiceMode,
    ServiceSpec,
    Task,
    TaskSpec,
    TaskStatus,
    UpdateConfig,
    Version,
)
from shoal.manager.orchestrator.modes import plan_service
from shoal.manager.orchestrator.plan import Plan

S = 1_000_000_000
NOW = dt.datetime(2024, 1, 1, 12, 0, 0, tzinfo=dt.UTC)
T0 = NOW - dt.timedelta(hours=1)
R, F, C, P, SD, RM, ST = (TaskState.RUNNING, TaskState.FAILED, TaskState.COMPLETE, TaskState.PENDING,
                          TaskState.SHUTDOWN, TaskState.REMOVE, TaskState.STARTING)
V1, V2 = "img:1", "img:2"  # the spec a task was made from, by image


def tspec(image: str = V2, restart: RestartPolicy | None = None) -> TaskSpec:
    return TaskSpec(container_spec=ContainerSpec(image=image), restart_policy=restart)


def svc(replicas: int | None = 3, *, image: str = V2, restart: RestartPolicy | None = None,
        parallelism: int | None = None, global_: bool = False, constraints: list[str] | None = None,
        version: int = 10) -> Service:
    template = tspec(image, restart)
    if constraints is not None:
        template = TaskSpec(container_spec=template.container_spec, restart_policy=restart,
                            placement=Placement(constraints=constraints))
    mode = (ServiceMode(global_=GlobalService()) if global_
            else ServiceMode(replicated=ReplicatedService(replicas=replicas)))
    update = None if parallelism is None else UpdateConfig(parallelism=parallelism)
    return Service(id="svc", version=Version(index=version),
                   spec=ServiceSpec(name="web", task_template=template, mode=mode, update_config=update))


def task(tid: str, slot: int = 1, state: TaskState = R, desired: TaskState = R, *, image: str = V2,
         node: str = "n1", born: int = 0, died_s_ago: float = 600, restart_count: int = 0,
         restart: RestartPolicy | None = None) -> Task:
    """A stored task; `born` orders tasks by creation (seconds after T0)."""
    return Task(id=tid, version=Version(index=5), created_at=T0 + dt.timedelta(seconds=born),
                name=f"web.{slot}.{tid}", spec=tspec(image, restart), service_id="svc", slot=slot,
                node_id=node, desired_state=desired, restart_count=restart_count,
                status=TaskStatus(state=state, timestamp=NOW - dt.timedelta(seconds=died_s_ago)),
                service_version=10 if image == V2 else 3)


def node(nid: str, state: str = "ready", availability: str = "active",
         labels: dict[str, str] | None = None) -> Node:
    return Node(id=nid, spec=NodeSpec(availability=availability, labels=labels, role="worker"),
                status=NodeStatus(state=state))


NODES = [node("n1"), node("n2")]


def ids() -> Callable[[], str]:
    counter = itertools.count(1)
    return lambda: f"new{next(counter)}"


def summary(plan: Plan) -> dict[str, Any]:
    """The plan without generated IDs: created (slot or node, image), desired changes, deletions."""
    created = sorted((t.slot or t.node_id, t.spec.container_spec.image if t.spec.container_spec else "")
                     for t in plan.create)
    out: dict[str, Any] = {
        "create": created,
        "update": {t.id: t.desired_state for t in plan.update},
        "delete": sorted(t.id for t in plan.delete),
    }
    if plan.requeue_after_s is not None:
        out["requeue"] = round(plan.requeue_after_s, 3)
    return out


def expect(create: list[tuple[object, str]] | None = None, update: dict[str, TaskState] | None = None,
           delete: list[str] | None = None, requeue: float | None = None) -> dict[str, Any]:
    out: dict[str, Any] = {"create": create or [], "update": update or {}, "delete": delete or []}
    if requeue is not None:
        out["requeue"] = requeue
    return out


def running(n: int, image: str = V2) -> list[Task]:
    return [task(f"t{i}", i, image=image) for i in range(1, n + 1)]


NO_DELAY = RestartPolicy(delay=0)

REPLICATED: list[tuple[str, Service, list[Task], list[Node], int, dict[str, Any]]] = [
    ("new service fills slots 1..N", svc(3), [], NODES, 5, expect(create=[(1, V2), (2, V2), (3, V2)])),
    ("unset replicas means 1", svc(None), [], NODES, 5, expect(create=[(1, V2)])),
    ("converged: nothing to do", svc(3), running(3), NODES, 5, expect()),
    ("scale up takes the next numbers", svc(5), running(3), NODES, 5, expect(create=[(4, V2), (5, V2)])),
    ("scale up fills the lowest gap", svc(3), [task("a", 1), task("c", 3)], NODES, 5,
     expect(create=[(2, V2)])),
    ("scale down removes the highest slots", svc(1), running(3), NODES, 5,
     expect(update={"t2": RM, "t3": RM})),
    ("scale down prefers slots not running", svc(2),
     [task("a", 1, ST), task("b", 2), task("c", 3)], NODES, 5, expect(update={"a": RM})),
    ("scale down: a task never handed to an agent is deleted at once", svc(2),
     [task("a", 1, P, node=""), task("b", 2), task("c", 3)], NODES, 5, expect(delete=["a"])),
    ("scale to 0 removes all; stopped history is deleted", svc(0),
     [task("h", 1, SD, SD, born=0), task("a", 1, born=1)], NODES, 5,
     expect(update={"a": RM}, delete=["h"])),
    ("removed task still running is kept", svc(0), [task("a", 1, R, RM)], NODES, 5, expect()),
    ("removed task that stopped is deleted", svc(0), [task("a", 1, SD, RM)], NODES, 5,
     expect(delete=["a"])),
    ("spec change: stop-first, one slot", svc(3), running(3, V1), NODES, 5, expect(update={"t1": SD})),
    ("spec change: all at once with parallelism 0", svc(2, parallelism=0), running(2, V1), NODES, 5,
     expect(update={"t1": SD, "t2": SD})),
    ("spec change: parallelism 2", svc(3, parallelism=2), running(3, V1), NODES, 5,
     expect(update={"t1": SD, "t2": SD})),
    ("spec change: wait while the old task stops", svc(2),
     [task("o1", 1, R, SD, image=V1), task("o2", 2, image=V1)], NODES, 5, expect()),
    ("spec change: old stopped -> replacement in its slot", svc(2),
     [task("o1", 1, SD, SD, image=V1), task("o2", 2, image=V1)], NODES, 5, expect(create=[(1, V2)])),
    ("spec change: old task's node is down -> replace without waiting", svc(2),
     [task("o1", 1, R, SD, image=V1, node="gone"), task("o2", 2, image=V1)], NODES, 5,
     expect(create=[(1, V2)])),
    ("spec change: wait until the new task runs", svc(2),
     [task("o1", 1, SD, SD, image=V1), task("n1", 1, ST, born=1), task("o2", 2, image=V1)], NODES, 5,
     expect()),
    ("spec change: new task runs -> next slot", svc(2),
     [task("o1", 1, SD, SD, image=V1), task("n1", 1, R, born=1), task("o2", 2, image=V1)], NODES, 5,
     expect(update={"o2": SD})),
    ("spec change: new task failed -> next slot (and its restart waits)", svc(2),
     [task("n1", 1, F, died_s_ago=1), task("o2", 2, image=V1)], NODES, 5,
     expect(update={"o2": SD}, requeue=4.0)),
    ("spec change: dead tasks are replaced first, at once", svc(2),
     [task("o1", 1, image=V1), task("o2", 2, F, image=V1, died_s_ago=0)], NODES, 5,
     expect(update={"o2": SD}, create=[(2, V2)])),
    ("spec change: pending old task is replaced at once", svc(1), [task("o1", 1, P, image=V1, node="")],
     NODES, 5, expect(update={"o1": SD}, create=[(1, V2)])),
    ("other service write (version moved, same spec) is no update", svc(2, version=99), running(2),
     NODES, 5, expect()),
    ("failed task restarts after the delay", svc(2, restart=NO_DELAY),
     [task("a", 1, F, restart=NO_DELAY), task("b", 2, restart=NO_DELAY)], NODES, 5,
     expect(update={"a": SD}, create=[(1, V2)])),
    ("failed task within the delay waits", svc(2), [task("a", 1, F, died_s_ago=2), task("b", 2)], NODES,
     5, expect(requeue=3.0)),
    ("condition none leaves the slot dead", svc(2, restart=RestartPolicy(condition="none")),
     [task("a", 1, F, restart=RestartPolicy(condition="none")), task("b", 2)], NODES, 5, expect()),
    ("max attempts used up leaves the slot dead", svc(1, restart=RestartPolicy(max_attempts=2)),
     [task("a", 1, F, restart=RestartPolicy(max_attempts=2), restart_count=2)], NODES, 5, expect()),
    ("task on a drained node is replaced at once", svc(2),
     [task("a", 1, node="n3"), task("b", 2)], [*NODES, node("n3", availability="drain")], 5,
     expect(update={"a": SD}, create=[(1, V2)])),
    ("task on a down node is replaced at once", svc(1), [task("a", 1, node="n3")],
     [*NODES, node("n3", state="down")], 5, expect(update={"a": SD}, create=[(1, V2)])),
    ("two live tasks in a slot: the older is shut down", svc(1),
     [task("old", 1, born=0), task("new", 1, born=1)], NODES, 5, expect(update={"old": SD})),
    ("history within the limit is kept", svc(1),
     [*(task(f"h{i}", 1, F, SD, born=i) for i in range(4)), task("cur", 1, born=9)], NODES, 5, expect()),
    ("history beyond the limit: oldest deleted", svc(1),
     [*(task(f"h{i}", 1, F, SD, born=i) for i in range(4)), task("cur", 1, born=9)], NODES, 2,
     expect(delete=["h0", "h1", "h2"])),
    ("a restart counts its new task against the limit", svc(1, restart=NO_DELAY),
     [*(task(f"h{i}", 1, F, SD, born=i) for i in range(4)), task("cur", 1, F, born=9, restart=NO_DELAY)],
     NODES, 5, expect(update={"cur": SD}, create=[(1, V2)], delete=["h0"])),
    ("negative limit keeps all history", svc(1),
     [*(task(f"h{i}", 1, F, SD, born=i) for i in range(7)), task("cur", 1, born=9)], NODES, -1, expect()),
    ("stopping tasks are never pruned", svc(1),
     [task("s0", 1, R, SD, born=0), task("h1", 1, F, SD, born=1), task("cur", 1, born=9)], NODES, 1,
     expect(delete=["h1"])),
]


@pytest.mark.parametrize(("name", "service", "tasks", "nodes", "limit", "expected"), REPLICATED,
                         ids=[c[0] for c in REPLICATED])
def test_plan_replicated(name: str, service: Service, tasks: list[Task], nodes: list[Node], limit: int,
                         expected: dict[str, Any]) -> None:
    assert summary(plan_service(service, tasks, nodes, limit, NOW, ids())) == expected


def gtask(tid: str, node_id: str, state: TaskState = R, desired: TaskState = R, **kw: Any) -> Task:
    return task(tid, 0, state, desired, node=node_id, **kw)


GSVC = svc(global_=True)
GLOBAL: list[tuple[str, Service, list[Task], list[Node], dict[str, Any]]] = [
    ("one task per ready node", GSVC, [], NODES, expect(create=[("n1", V2), ("n2", V2)])),
    ("a new node gets a task", GSVC, [gtask("a", "n1")], NODES, expect(create=[("n2", V2)])),
    ("converged", GSVC, [gtask("a", "n1"), gtask("b", "n2")], NODES, expect()),
    ("drained node: its task shuts down", GSVC, [gtask("a", "n1"), gtask("b", "n2")],
     [node("n1"), node("n2", availability="drain")], expect(update={"b": SD})),
    ("down node: its task shuts down", GSVC, [gtask("a", "n1"), gtask("b", "n2")],
     [node("n1"), node("n2", state="down")], expect(update={"b": SD})),
    ("paused node: task kept, none added", GSVC, [gtask("a", "n1")],
     [node("n1"), node("n2", availability="pause")], expect()),
    ("not-ready node gets no task", GSVC, [], [node("n1"), node("n2", state="unknown")],
     expect(create=[("n1", V2)])),
    ("deleted node: its tasks are deleted (nothing left to stop them)", GSVC,
     [gtask("a", "n1"), gtask("b", "n9"), gtask("h", "n9", F, SD)], [node("n1")],
     expect(delete=["b", "h"])),
    ("constraints pick the nodes", svc(global_=True, constraints=["node.labels.zone==a"]), [],
     [node("n1", labels={"zone": "A"}), node("n2", labels={"zone": "b"}), node("n3")],
     expect(create=[("n1", V2)])),
    ("a node that stops matching loses its task", svc(global_=True, constraints=["node.labels.zone!=b"]),
     [gtask("a", "n1"), gtask("b", "n2")], [node("n1"), node("n2", labels={"zone": "b"})],
     expect(update={"b": SD})),
    ("wait for a stopping task before its successor", GSVC, [gtask("a", "n1", R, SD), gtask("b", "n2")],
     NODES, expect()),
    ("failed task restarts on its node", svc(global_=True, restart=NO_DELAY),
     [gtask("a", "n1", F, restart=NO_DELAY), gtask("b", "n2", restart=NO_DELAY)], NODES,
     expect(update={"a": SD}, create=[("n1", V2)])),
    ("rolling update node by node", GSVC, [gtask("a", "n1", image=V1), gtask("b", "n2", image=V1)], NODES,
     expect(update={"a": SD})),
]


@pytest.mark.parametrize(("name", "service", "tasks", "nodes", "expected"), GLOBAL,
                         ids=[c[0] for c in GLOBAL])
def test_plan_global(name: str, service: Service, tasks: list[Task], nodes: list[Node],
                     expected: dict[str, Any]) -> None:
    assert summary(plan_service(service, tasks, nodes, 5, NOW, ids())) == expected


def test_new_tasks_carry_what_the_pipeline_needs() -> None:
    service = svc(1)
    plan = plan_service(service, [], NODES, 5, NOW, ids())
    (t,) = plan.create
    assert (t.id, t.name, t.slot, t.node_id, t.service_id) == ("new1", "web.1.new1", 1, "", "svc")
    assert (t.status.state, t.status.message, t.status.timestamp) == (TaskState.NEW, "created", NOW)
    assert t.desired_state == TaskState.RUNNING
    assert t.spec == service.spec.task_template
    assert t.service_version == 10


def test_global_tasks_are_named_and_preassigned_by_node() -> None:
    plan = plan_service(svc(global_=True), [], [node("n1")], 5, NOW, ids())
    (t,) = plan.create
    assert (t.name, t.node_id, t.slot) == ("web.n1.new1", "n1", 0)


def test_a_restart_counts_attempts_of_the_same_spec() -> None:
    policy = RestartPolicy(delay=0)
    plan = plan_service(svc(1, restart=policy), [task("a", 1, F, restart=policy, restart_count=2)],
                        NODES, 5, NOW, ids())
    assert [t.restart_count for t in plan.create] == [3]


def test_deleted_service_removes_then_deletes_its_tasks() -> None:
    tasks = [task("run", 1), task("pend", 2, P, node=""), task("dead", 3, F, SD), task("gone", 1, SD, RM)]
    plan = plan_service(None, tasks, NODES, 5, NOW, ids())
    assert summary(plan) == expect(update={"run": RM}, delete=["dead", "gone", "pend"])


def test_updates_change_only_the_desired_state() -> None:
    old = task("a", 1, F, restart=NO_DELAY)
    plan = plan_service(svc(1, restart=NO_DELAY), [old], NODES, 5, NOW, ids())
    (updated,) = plan.update
    assert updated == Task(**{**{f: getattr(old, f) for f in old.__struct_fields__}, "desired_state": SD})

"""Invariants of the replicated plan over random slot histories (hypothesis)."""

from __future__ import annotations

import datetime as dt
import itertools
from collections.abc import Callable

import msgspec
from hypothesis import given, settings
from hypothesis import strategies as st

from shoal.api.states import TaskState
from shoal.api.types import (
    ContainerSpec,
    Node,
    NodeSpec,
    NodeStatus,
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
from shoal.manager.orchestrator.plan import Plan
from shoal.manager.orchestrator.replicated import plan_replicated
from shoal.manager.orchestrator.slots import is_stopped, node_invalid

NOW = dt.datetime(2024, 1, 1, 12, tzinfo=dt.UTC)
STATES = [TaskState.NEW, TaskState.PENDING, TaskState.ASSIGNED, TaskState.STARTING, TaskState.RUNNING,
          TaskState.COMPLETE, TaskState.SHUTDOWN, TaskState.FAILED, TaskState.REJECTED]
DESIRED = [TaskState.RUNNING, TaskState.SHUTDOWN, TaskState.REMOVE]
NODES = [
    Node(id="n1", spec=NodeSpec(availability="active"), status=NodeStatus(state="ready")),
    Node(id="n2", spec=NodeSpec(availability="drain"), status=NodeStatus(state="ready")),
    Node(id="n3", spec=NodeSpec(availability="active"), status=NodeStatus(state="down")),
]
NODE_MAP = {n.id: n for n in NODES}


def spec(image: str, condition: str) -> TaskSpec:
    return TaskSpec(container_spec=ContainerSpec(image=image),
                    restart_policy=RestartPolicy(condition=condition, delay=2_000_000_000))


@st.composite
def scenarios(draw: st.DrawFn) -> tuple[Service, list[Task], int]:
    condition = draw(st.sampled_from(["any", "on-failure", "none"]))
    service = Service(id="svc", version=Version(index=10), spec=ServiceSpec(
        name="web", task_template=spec("img:2", condition),
        mode=ServiceMode(replicated=ReplicatedService(replicas=draw(st.integers(0, 5)))),
        update_config=UpdateConfig(parallelism=draw(st.integers(0, 2)))))
    tasks = []
    for i in range(draw(st.integers(0, 12))):
        tasks.append(Task(
            id=f"t{i:02d}", version=Version(index=3), service_id="svc", slot=draw(st.integers(1, 7)),
            created_at=NOW - dt.timedelta(seconds=draw(st.integers(5, 100))),
            spec=spec(draw(st.sampled_from(["img:1", "img:2"])), condition),
            node_id=draw(st.sampled_from(["n1", "n2", "n3", "gone", ""])),
            desired_state=draw(st.sampled_from(DESIRED)),
            status=TaskStatus(state=draw(st.sampled_from(STATES)),
                              timestamp=NOW - dt.timedelta(seconds=draw(st.integers(0, 4)))),
            restart_count=draw(st.integers(0, 2))))
    return service, tasks, draw(st.integers(-1, 6))


def ids() -> Callable[[], str]:
    counter = itertools.count()
    return lambda: f"new{next(counter):03d}"


def apply(tasks: list[Task], plan: Plan) -> list[Task]:
    by_id = {t.id: t for t in tasks}
    for t in plan.update:
        by_id[t.id] = t
    for t in plan.delete:
        del by_id[t.id]
    for t in plan.create:
        by_id[t.id] = msgspec.structs.replace(t, created_at=NOW)
    return list(by_id.values())


def live(task: Task) -> bool:
    return task.desired_state <= TaskState.RUNNING


@settings(max_examples=300, deadline=None)
@given(scenarios())
def test_at_most_one_live_task_per_slot_and_never_more_slots_than_replicas(
        scenario: tuple[Service, list[Task], int]) -> None:
    service, tasks, limit = scenario
    after = apply(tasks, plan_replicated(service, tasks, NODES, limit, NOW, ids()))
    live_slots = [t.slot for t in after if live(t)]
    assert len(live_slots) == len(set(live_slots))
    replicas = service.spec.mode.replicated.replicas if service.spec.mode.replicated else None
    assert len(live_slots) <= (replicas or 0)


@settings(max_examples=300, deadline=None)
@given(scenarios())
def test_the_same_input_gives_the_same_plan(scenario: tuple[Service, list[Task], int]) -> None:
    service, tasks, limit = scenario
    first = plan_replicated(service, tasks, NODES, limit, NOW, ids())
    again = plan_replicated(service, list(reversed(tasks)), list(reversed(NODES)), limit, NOW, ids())
    assert first == again


@settings(max_examples=300, deadline=None)
@given(scenarios())
def test_plans_only_raise_desired_states_delete_stopped_tasks_and_start_after_stop(
        scenario: tuple[Service, list[Task], int]) -> None:
    service, tasks, limit = scenario
    plan = plan_replicated(service, tasks, NODES, limit, NOW, ids())
    before = {t.id: t for t in tasks}
    for t in plan.update:
        assert t.desired_state > before[t.id].desired_state
        assert t == msgspec.structs.replace(before[t.id], desired_state=t.desired_state)
    for t in plan.delete:
        assert is_stopped(t, NODE_MAP)
    after = apply(tasks, plan)
    for new in plan.create:
        for other in after:
            if other.slot == new.slot and other.id != new.id and other.desired_state != TaskState.REMOVE:
                # Stop-first: a slot's previous task has stopped, or its node will never stop it.
                assert is_stopped(other, NODE_MAP) or node_invalid(NODE_MAP.get(other.node_id))


@settings(max_examples=200, deadline=None)
@given(scenarios())
def test_replanning_without_news_reaches_a_fixed_point(scenario: tuple[Service, list[Task], int]) -> None:
    service, tasks, limit = scenario
    new_id = ids()
    for _ in range(6):
        plan = plan_replicated(service, tasks, NODES, limit, NOW, new_id)
        if plan.empty:
            return
        tasks = apply(tasks, plan)
    raise AssertionError(f"still changing after 6 plans: {plan}")

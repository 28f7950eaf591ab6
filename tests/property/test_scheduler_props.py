"""Scheduler invariants (DESIGN.md §7): never over reservations, constraints honoured, even spread,
deterministic placement."""

from __future__ import annotations

import random
from collections import Counter

from hypothesis import given, settings
from hypothesis import strategies as st

from shoal.api.states import TaskState
from shoal.api.types import (
    Node,
    NodeDescription,
    NodeResources,
    NodeSpec,
    NodeStatus,
    Placement,
    Reservations,
    Resources,
    Task,
    TaskSpec,
    TaskStatus,
)
from shoal.manager.scheduler.constraints import parse_constraint, satisfies_all
from shoal.manager.scheduler.nodeinfo import build_node_infos
from shoal.manager.scheduler.pipeline import schedule

ZONES = ["a", "b", "c"]


@st.composite
def nodes(draw: st.DrawFn) -> list[Node]:
    count = draw(st.integers(1, 8))
    out = []
    for i in range(count):
        zone = draw(st.sampled_from([*ZONES, None]))
        out.append(Node(
            id=f"n{i:02d}",
            spec=NodeSpec(role="worker", availability=draw(st.sampled_from(["active", "active", "drain"])),
                          labels={"zone": zone} if zone else None),
            description=NodeDescription(resources=NodeResources(
                nano_cpus=draw(st.integers(0, 8)) * 500_000_000, memory_bytes=draw(st.integers(0, 8)) << 28)),
            status=NodeStatus(state=draw(st.sampled_from(["ready", "ready", "down"]))),
        ))
    return out


@st.composite
def services(draw: st.DrawFn) -> list[Task]:
    out: list[Task] = []
    for s in range(draw(st.integers(1, 3))):
        constraint = draw(st.sampled_from([None, "node.labels.zone==a", "node.labels.zone!=b"]))
        spec = TaskSpec(
            resources=Resources(reservations=Reservations(
                nano_cpus=draw(st.integers(0, 3)) * 250_000_000, memory_bytes=draw(st.integers(0, 3)) << 27)),
            placement=Placement(constraints=[constraint] if constraint else None),
        )
        for slot in range(1, draw(st.integers(1, 12)) + 1):
            out.append(Task(id=f"s{s}-{slot:02d}", service_id=f"s{s}", slot=slot, spec=spec,
                            status=TaskStatus(state=TaskState.PENDING), desired_state=TaskState.RUNNING))
    return out


def _constraints(t: Task) -> list[str]:
    return (t.spec.placement.constraints if t.spec.placement else None) or []


@settings(max_examples=150, deadline=None)
@given(nodes(), services())
def test_never_over_reservations_and_constraints_hold(node_list: list[Node], pending: list[Task]) -> None:
    decisions = schedule(pending, build_node_infos(node_list, []))
    assert set(decisions.assigned) | set(decisions.unplaceable) == {t.id for t in pending}
    assert not set(decisions.assigned) & set(decisions.unplaceable)
    by_id = {n.id: n for n in node_list}
    used: dict[str, list[int]] = {n.id: [0, 0] for n in node_list}
    for t in pending:
        node_id = decisions.assigned.get(t.id)
        if node_id is None:
            continue
        node = by_id[node_id]
        assert node.status.state == "ready" and node.spec.availability == "active"
        assert satisfies_all(node, tuple(parse_constraint(c) for c in _constraints(t)))
        res = t.spec.resources.reservations if t.spec.resources else None
        assert res is not None
        used[node_id][0] += res.nano_cpus
        used[node_id][1] += res.memory_bytes
    for node_id, (cpu, mem) in used.items():
        capacity = by_id[node_id].description.resources
        assert cpu <= capacity.nano_cpus and mem <= capacity.memory_bytes


@settings(max_examples=150, deadline=None)
@given(nodes(), st.integers(1, 40))
def test_spread_is_even_without_constraints(node_list: list[Node], n: int) -> None:
    pending = [Task(id=f"t{i:02d}", service_id="s", slot=i, status=TaskStatus(state=TaskState.PENDING),
                    desired_state=TaskState.RUNNING) for i in range(n)]
    decisions = schedule(pending, build_node_infos(node_list, []))
    eligible = [x.id for x in node_list if x.status.state == "ready" and x.spec.availability == "active"]
    counts = Counter(decisions.assigned.values())
    if eligible:
        per_node = [counts.get(nid, 0) for nid in eligible]
        assert max(per_node) - min(per_node) <= 1
        assert not decisions.unplaceable
    else:
        assert not decisions.assigned


@settings(max_examples=100, deadline=None)
@given(nodes(), services(), st.randoms(use_true_random=False))
def test_deterministic(node_list: list[Node], pending: list[Task], rnd: random.Random) -> None:
    first = schedule(pending, build_node_infos(node_list, []))
    shuffled_tasks, shuffled_nodes = list(pending), list(node_list)
    rnd.shuffle(shuffled_tasks)
    rnd.shuffle(shuffled_nodes)
    second = schedule(shuffled_tasks, build_node_infos(shuffled_nodes, []))
    assert first == second

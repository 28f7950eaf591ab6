"""The global orchestrator's decision: `plan_global(service, tasks, nodes, ...) -> Plan`.

Called by `orchestrator.component.Orchestrator.reconcile` for a service in global mode. Pure
(swarmkit: orchestrator/global/global.go). The "slot" of a global task is its node: tasks are
created with NodeID preset (the scheduler only validates them) and Slot 0.

| node                                              | its tasks of this service                   |
|---------------------------------------------------|---------------------------------------------|
| deleted                                           | all -> desired REMOVE (deleted once stopped)|
| down, drained, or no longer matching constraints  | live ones -> SHUTDOWN                       |
| paused, or not ready (unknown/disconnected)       | left alone; nothing new placed              |
| ready, active, matching                           | one live task (see below)                   |

On a ready, active, matching node the live task is created if missing (once a stopping one has
stopped), restarted by the restart policy, and replaced by the rolling update.

Then the reaper deletes stopped REMOVE tasks and history beyond the limit, per node.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Callable, Iterable, Sequence
from functools import partial

from shoal.api.defaults import TASK_HISTORY_LIMIT
from shoal.api.ids import new_id as random_id
from shoal.api.states import TaskState
from shoal.api.types import Node, Service, Task
from shoal.manager.orchestrator.constraints import node_matches
from shoal.manager.orchestrator.plan import IdFactory, Plan, PlanBuilder, new_task
from shoal.manager.orchestrator.reaper import reap
from shoal.manager.orchestrator.restart import next_restart_count
from shoal.manager.orchestrator.rolling import MakeNew, roll, tend_dead
from shoal.manager.orchestrator.slots import NodeMap, SlotView, group_by_node, view_slot


def node_wanted(node: Node, service: Service) -> bool:
    """The node should run this service's task: not down or drained, and constraints match."""
    if node.status.state == "down" or node.spec.availability == "drain":
        return False
    placement = service.spec.task_template.placement
    return node_matches(node, placement.constraints if placement else None)


def node_placeable(node: Node) -> bool:
    """A new task may go there now (ready and active)."""
    return node.status.state == "ready" and node.spec.availability in ("active", "")


def plan_global(service: Service, tasks: Iterable[Task], nodes: Iterable[Node],
                history_limit: int = TASK_HISTORY_LIMIT, now: dt.datetime | None = None,
                new_id: IdFactory = random_id) -> Plan:
    """What to create, update and delete so each eligible node runs one task of `service`."""
    now = now or dt.datetime.now(dt.UTC)
    task_list = list(tasks)
    node_map = {n.id: n for n in nodes}
    by_node = group_by_node(task_list)
    builder = PlanBuilder()

    def make_new(old: Task) -> Task:
        return new_task(service, now, new_id, node_id=old.node_id,
                        restart_count=next_restart_count(old, service.spec.task_template))

    kept: dict[str, SlotView] = {}
    for node_id in sorted(set(by_node) | set(node_map)):
        node_tasks = by_node.get(node_id, [])
        node = node_map.get(node_id)
        if node is None:
            for task in node_tasks:
                builder.set_desired(task, TaskState.REMOVE)
            continue
        view = view_slot(node_tasks, node_map)
        if not node_wanted(node, service):
            for task in view.extra_live + ((view.live,) if view.live else ()):
                builder.set_desired(task, TaskState.SHUTDOWN)
            continue
        if node_placeable(node):
            kept[node_id] = view
            _tend_node(service, view, node_tasks, node_map, now, builder, make_new,
                       partial(new_task, service, now, new_id, node_id=node_id))
    roll(service, kept, node_map, builder, make_new)
    reap(task_list, lambda t: t.node_id, node_map, history_limit, builder)
    return builder.build()


def _tend_node(service: Service, view: SlotView, node_tasks: Sequence[Task], nodes: NodeMap,
               now: dt.datetime, builder: PlanBuilder, make_new: MakeNew,
               make_first: Callable[[], Task]) -> None:
    for extra in view.extra_live:
        builder.set_desired(extra, TaskState.SHUTDOWN)
    if view.live is None:
        if not view.stopping:  # stop-first: a stopping task is let go before its successor
            builder.create.append(make_first())
        return
    if view.live.status.state.terminal:
        tend_dead(service, view, node_tasks, nodes, now, builder, make_new)

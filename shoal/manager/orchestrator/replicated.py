"""The replicated orchestrator's decision: `plan_replicated(service, tasks, nodes, ...) -> Plan`.

Called by `orchestrator.component.Orchestrator.reconcile` for a service in replicated mode. Pure:
it reads its arguments and returns a Plan (swarmkit: orchestrator/replicated/services.go).

A slot (1..N, see `slots.py`) is occupied when it has a live task or a task being stopped for a
stop-first replacement; the service wants `Replicas` occupied slots. In order:

1. Scale down: too many occupied slots -> victims get desired REMOVE (all their tasks). Victims
   are slots without a RUNNING task first, then the highest numbers (swarmkit also prefers the
   most loaded nodes; Shoal does not look at nodes here).
2. Each kept slot: duplicate live tasks -> SHUTDOWN; a live task on a node that is gone, down
   or drained -> replaced at once; a dead live task -> the restart supervisor (`restart.py`).
3. Scale up / refill: too few occupied slots -> new tasks, first in empty slots that still hold
   history (the second half of a stop-first replacement, so it stays in its slot), then in the
   lowest numbers no task uses.
4. Rolling update of slots whose task has an older spec (`rolling.py`).
5. Reaper: delete stopped REMOVE tasks and history beyond the limit (`reaper.py`).
"""

from __future__ import annotations

import datetime as dt
import itertools
from collections.abc import Iterable, Mapping, Sequence

from shoal.api.defaults import TASK_HISTORY_LIMIT
from shoal.api.ids import new_id as random_id
from shoal.api.states import TaskState
from shoal.api.types import Node, Service, Task
from shoal.manager.orchestrator.plan import IdFactory, Plan, PlanBuilder, new_task
from shoal.manager.orchestrator.reaper import reap
from shoal.manager.orchestrator.restart import next_restart_count
from shoal.manager.orchestrator.rolling import MakeNew, roll, still_stopping, tend_dead
from shoal.manager.orchestrator.slots import NodeMap, SlotView, group_by_slot, node_invalid, view_slot


def desired_replicas(service: Service) -> int:
    """Replicas the spec asks for; an unset count means 1, as Docker fills it."""
    replicated = service.spec.mode.replicated
    if replicated is None or replicated.replicas is None:
        return 1
    return max(0, replicated.replicas)


def plan_replicated(service: Service, tasks: Iterable[Task], nodes: Iterable[Node],
                    history_limit: int = TASK_HISTORY_LIMIT, now: dt.datetime | None = None,
                    new_id: IdFactory = random_id) -> Plan:
    """What to create, update and delete so `service` has its replicas, in one step."""
    now = now or dt.datetime.now(dt.UTC)
    task_list = list(tasks)
    node_map = {n.id: n for n in nodes}
    by_slot = group_by_slot(task_list)
    views = {slot: view_slot(ts, node_map) for slot, ts in sorted(by_slot.items())}
    builder = PlanBuilder()

    def make_new(old: Task) -> Task:
        return new_task(service, now, new_id, slot=old.slot,
                        restart_count=next_restart_count(old, service.spec.task_template))

    occupied = [slot for slot, view in views.items() if view.occupied]
    replicas = desired_replicas(service)
    victims = _victims(views, occupied, replicas)
    for slot in victims:
        for task in by_slot[slot]:
            builder.set_desired(task, TaskState.REMOVE)
    kept = {slot: views[slot] for slot in occupied if slot not in victims}
    for slot, view in kept.items():
        _tend_slot(service, view, by_slot[slot], node_map, now, builder, make_new)
    _fill(service, views, by_slot, replicas - len(kept), now, new_id, builder)
    roll(service, kept, node_map, builder, make_new)
    reap(task_list, lambda t: t.slot, node_map, history_limit, builder)
    return builder.build()


def _victims(views: Mapping[int, SlotView], occupied: Sequence[int], replicas: int) -> set[int]:
    excess = len(occupied) - replicas
    if excess <= 0:
        return set()

    def running(slot: int) -> bool:
        live = views[slot].live
        return live is not None and live.status.state == TaskState.RUNNING

    return set(sorted(occupied, key=lambda s: (running(s), -s))[:excess])


def _tend_slot(service: Service, view: SlotView, slot_tasks: Sequence[Task], nodes: NodeMap,
               now: dt.datetime, builder: PlanBuilder, make_new: MakeNew) -> None:
    for extra in view.extra_live:
        builder.set_desired(extra, TaskState.SHUTDOWN)
    live = view.live
    if live is None:
        return  # a stop-first replacement waits for its old task to stop
    if live.status.state.terminal:
        tend_dead(service, view, slot_tasks, nodes, now, builder, make_new)
    elif live.node_id and node_invalid(nodes.get(live.node_id)):
        # Its node will not run it: replace at once, as swarmkit does (no restart delay), unless
        # an older task of the slot is still stopping on a good node (stop-first; refilled later).
        builder.set_desired(live, TaskState.SHUTDOWN)
        if not still_stopping(view, nodes):
            builder.create.append(make_new(live))


def _fill(service: Service, views: Mapping[int, SlotView], by_slot: Mapping[int, Sequence[Task]],
          missing: int, now: dt.datetime, new_id: IdFactory, builder: PlanBuilder) -> None:
    """Create `missing` tasks; drop the history of empty slots that are not refilled."""
    empty = [slot for slot, view in views.items() if not view.occupied and view.history]
    fresh = (n for n in itertools.count(1) if n not in by_slot)
    targets = (empty + list(itertools.islice(fresh, max(0, missing - len(empty)))))[:max(0, missing)]
    for slot in targets:
        builder.create.append(new_task(service, now, new_id, slot=slot))
    for slot in empty:
        if slot not in targets:
            for task in views[slot].history:
                builder.set_desired(task, TaskState.REMOVE)

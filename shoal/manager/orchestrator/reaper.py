"""The task reaper, as the last step of every plan: delete removed tasks and excess history.

Called by the plan functions after they have decided what to create and which desired states to
change, so the counts include this plan's own work (a restart that pushes a slot over the limit
prunes in the same transaction). swarmkit: manager/orchestrator/taskreaper/task_reaper.go.

- A task with desired REMOVE is deleted once stopped (`slots.is_stopped`): scale-down victims and
  the tasks of deleted services; never kept as history.
- Per slot (replicated) or node (global), tasks beyond the retention limit are deleted oldest
  first, counting every task of the slot including the current one and this plan's new one, as
  swarmkit does; only stopped tasks with desired SHUTDOWN are candidates, so a running or
  stopping task is never deleted. A negative limit keeps everything.
"""

from __future__ import annotations

from collections.abc import Callable, Hashable, Iterable

from shoal.api.states import TaskState
from shoal.api.types import Task
from shoal.manager.orchestrator.plan import PlanBuilder
from shoal.manager.orchestrator.slots import NodeMap, age_key, is_stopped

SlotKey = Callable[[Task], Hashable]


def reap(tasks: Iterable[Task], slot_of: SlotKey, nodes: NodeMap, history_limit: int,
         builder: PlanBuilder) -> None:
    """Add the deletions to `builder`. `tasks` are the tasks as read (before the plan)."""
    by_slot: dict[Hashable, list[Task]] = {}
    for task in tasks:
        if task.id in builder.delete:
            continue
        current = builder.current(task)
        if current.desired_state >= TaskState.REMOVE:
            if is_stopped(current, nodes):
                builder.remove(task)
            continue
        by_slot.setdefault(slot_of(task), []).append(current)
    if history_limit < 0:
        return
    created: dict[Hashable, int] = {}
    for task in builder.create:
        created[slot_of(task)] = created.get(slot_of(task), 0) + 1
    for key, slot_tasks in by_slot.items():
        excess = len(slot_tasks) + created.get(key, 0) - history_limit
        if excess <= 0:
            continue
        candidates = [t for t in sorted(slot_tasks, key=age_key)
                      if t.desired_state == TaskState.SHUTDOWN and is_stopped(t, nodes)]
        for task in candidates[:excess]:
            builder.remove(task)

"""Replacing a slot's task: restarts of dead tasks and the rolling (stop-first) update.

Called by `plan_replicated` and `plan_global` for each slot (replicated) or node (global) they
keep. Both replace the same way: the old task's desired state becomes SHUTDOWN (it stays as
history) and the new task is created from the service's current spec in the same slot/node.

Rolling update, stop-first (swarmkit updater.go; reference §4.5), one step per plan:

| slot's state                                    | this plan                                      |
|-------------------------------------------------|------------------------------------------------|
| live task dirty (older spec), turn has come     | old -> SHUTDOWN; if it and every older task of  |
|                                                 | the slot has stopped, create the new one too    |
| old task stopping, no live task                 | wait (counts as in flight)                     |
| old task stopped, no live task                  | the caller refills the slot (new spec)          |
| new task live, before RUNNING                   | wait (counts as in flight)                     |
| new task RUNNING or dead                        | done: the next dirty slot may start            |

A dirty slot's turn comes while fewer than UpdateConfig.Parallelism (default 1; 0 = all) slots
are in flight; any task created by this plan (a restart, a scale-up) counts as in flight.
Dead slots go first, then ones not running, then by slot key. Not done here: update Delay,
Monitor, FailureAction and rollback, start-first order, UpdateStatus.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Callable, Mapping, Sequence
from typing import TypeVar

from shoal.api.defaults import DEFAULT_UPDATE_CONFIG
from shoal.api.states import TaskState
from shoal.api.types import Service, Task
from shoal.manager.orchestrator.plan import PlanBuilder
from shoal.manager.orchestrator.restart import RestartAction, decide_restart
from shoal.manager.orchestrator.slots import NodeMap, SlotView, is_dirty, is_stopped, node_invalid

K = TypeVar("K", int, str)
MakeNew = Callable[[Task], Task]  # the replacement of a task, in its slot/node


def replace(builder: PlanBuilder, old: Task, make_new: MakeNew) -> None:
    builder.set_desired(old, TaskState.SHUTDOWN)
    builder.create.append(make_new(old))


def still_stopping(view: SlotView, nodes: NodeMap) -> bool:
    """Another task of the slot is being stopped and its node will report it: stop-first waits.

    Duplicate live tasks count too: the plan shuts them down.
    """
    others = view.stopping + tuple(t for t in view.extra_live if not is_stopped(t, nodes))
    return any(not node_invalid(nodes.get(t.node_id)) for t in others)


def tend_dead(service: Service, view: SlotView, slot_tasks: Sequence[Task], nodes: NodeMap,
              now: dt.datetime, builder: PlanBuilder, make_new: MakeNew) -> None:
    """The slot's live task has a terminal status: restart it now, later, or never."""
    live = view.live
    if live is None or is_dirty(live, service):
        return  # the rolling update replaces it, without the restart delay
    decision = decide_restart(live, slot_tasks, now)
    if decision.action is RestartAction.RESTART and still_stopping(view, nodes):
        return  # the stopping task's status change will bring us back
    if decision.action is RestartAction.RESTART:
        replace(builder, live, make_new)
    elif decision.action is RestartAction.WAIT:
        builder.requeue(decision.wait_s)


def _in_flight(service: Service, views: Mapping[K, SlotView], builder: PlanBuilder) -> int:
    count = len(builder.create)
    for view in views.values():
        live = view.live
        if live is None:
            count += bool(view.stopping)
        elif (builder.current(live).desired_state <= TaskState.RUNNING and not live.status.state.terminal
              and live.status.state < TaskState.RUNNING and not is_dirty(live, service)):
            count += 1
    return count


def roll(service: Service, views: Mapping[K, SlotView], nodes: NodeMap, builder: PlanBuilder,
         make_new: MakeNew) -> None:
    """Start replacing as many dirty slots of `views` (the slots kept) as parallelism allows."""
    dirty: list[tuple[bool, bool, K, Task, bool]] = []
    for key, view in views.items():
        live = view.live
        if live is None or builder.current(live).desired_state > TaskState.RUNNING:
            continue
        if is_dirty(live, service):
            state = live.status.state
            dirty.append((not state.terminal, state == TaskState.RUNNING, key, live,
                          still_stopping(view, nodes)))
    if not dirty:
        return
    parallelism = (service.spec.update_config or DEFAULT_UPDATE_CONFIG).parallelism
    room = len(dirty) if parallelism == 0 else parallelism - _in_flight(service, views, builder)
    for _, _, _, old, blocked in sorted(dirty, key=lambda d: d[:3])[:max(0, room)]:
        builder.set_desired(old, TaskState.SHUTDOWN)
        if is_stopped(old, nodes) and not blocked:
            builder.create.append(make_new(old))

"""`plan_service`: the one entry point that picks the plan function for a service's mode.

Called by `orchestrator.component.Orchestrator.reconcile` (and tests). Pure.

| service                          | plan                                                  |
|----------------------------------|-------------------------------------------------------|
| deleted (None)                   | `plan_removed`: every task -> REMOVE, deleted once stopped |
| global                           | `plan_global`                                         |
| replicated (or no mode: 1 replica)| `plan_replicated`                                    |
| replicated-job / global-job      | nothing (jobs are a later issue)                      |
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Iterable

from shoal.api.defaults import TASK_HISTORY_LIMIT
from shoal.api.ids import new_id as random_id
from shoal.api.states import TaskState
from shoal.api.types import Node, Service, Task
from shoal.manager.orchestrator.global_ import plan_global
from shoal.manager.orchestrator.plan import IdFactory, Plan, PlanBuilder
from shoal.manager.orchestrator.reaper import reap
from shoal.manager.orchestrator.replicated import plan_replicated


def is_global(service: Service) -> bool:
    return service.spec.mode.global_ is not None


def is_job(service: Service) -> bool:
    mode = service.spec.mode
    return mode.replicated_job is not None or mode.global_job is not None


def plan_removed(tasks: Iterable[Task], nodes: Iterable[Node]) -> Plan:
    """The tasks of a deleted service: shut down, then deleted (the task reaper's part)."""
    task_list = list(tasks)
    builder = PlanBuilder()
    for task in task_list:
        builder.set_desired(task, TaskState.REMOVE)
    reap(task_list, lambda t: t.slot, {n.id: n for n in nodes}, -1, builder)
    return builder.build()


def plan_service(service: Service | None, tasks: Iterable[Task], nodes: Iterable[Node],
                 history_limit: int = TASK_HISTORY_LIMIT, now: dt.datetime | None = None,
                 new_id: IdFactory = random_id) -> Plan:
    if service is None:
        return plan_removed(tasks, nodes)
    if is_job(service):
        return Plan()
    if is_global(service):
        return plan_global(service, tasks, nodes, history_limit, now, new_id)
    return plan_replicated(service, tasks, nodes, history_limit, now, new_id)

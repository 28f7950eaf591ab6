"""The orchestrators' output: a Plan (frozen data), and the helpers that build one.

The plan functions (`plan_replicated`, `plan_global`, `plan_removed`) return a Plan and never
write; `orchestrator.component.apply_plan` writes one Plan in one store transaction
(DESIGN.md §5.1). Updated tasks are copies of the tasks read, with only `desired_state` changed
and the version they were read at, so a concurrent write makes the transaction conflict.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Callable
from dataclasses import dataclass, field

import msgspec

from shoal.api.states import TaskState
from shoal.api.types import Service, Task, TaskStatus

IdFactory = Callable[[], str]


@dataclass(frozen=True)
class Plan:
    """What one reconcile of one service decided."""

    create: tuple[Task, ...] = ()
    update: tuple[Task, ...] = ()  # same tasks, new desired_state, version as read
    delete: tuple[Task, ...] = ()  # as read, so the delete can check the version
    requeue_after_s: float | None = None  # run again then (a restart delay is pending)

    @property
    def empty(self) -> bool:
        return not (self.create or self.update or self.delete)


@dataclass
class PlanBuilder:
    """Accumulates decisions; the last desired state set for a task wins."""

    create: list[Task] = field(default_factory=list)
    update: dict[str, Task] = field(default_factory=dict)
    delete: dict[str, Task] = field(default_factory=dict)
    requeue_after_s: float | None = None

    def set_desired(self, task: Task, state: TaskState) -> Task:
        """Ask for `task` to move to `state` (never backwards); returns the task as it will be."""
        current = self.update.get(task.id, task)
        if current.desired_state >= state:
            return current
        changed = msgspec.structs.replace(current, desired_state=state)
        self.update[task.id] = changed
        return changed

    def remove(self, task: Task) -> None:
        self.update.pop(task.id, None)
        self.delete[task.id] = task

    def requeue(self, after_s: float) -> None:
        if self.requeue_after_s is None or after_s < self.requeue_after_s:
            self.requeue_after_s = after_s

    def current(self, task: Task) -> Task:
        """`task` with the decisions made so far applied."""
        return self.update.get(task.id, task)

    def build(self) -> Plan:
        return Plan(
            create=tuple(self.create),
            update=tuple(sorted(self.update.values(), key=lambda t: t.id)),
            delete=tuple(sorted(self.delete.values(), key=lambda t: t.id)),
            requeue_after_s=self.requeue_after_s,
        )


def new_task(service: Service, now: dt.datetime, new_id: IdFactory, *, slot: int = 0, node_id: str = "",
             restart_count: int = 0) -> Task:
    """A fresh task for `slot` (replicated) or `node_id` (global), made from the current spec."""
    task_id = new_id()
    where = node_id if node_id else str(slot)
    return Task(
        id=task_id,
        name=f"{service.spec.name}.{where}.{task_id}",
        spec=service.spec.task_template,
        service_id=service.id,
        slot=slot,
        node_id=node_id,
        status=TaskStatus(timestamp=now, state=TaskState.NEW, message="created"),
        desired_state=TaskState.RUNNING,
        service_version=service.version.index,
        restart_count=restart_count,
    )

"""What one agent has been told: the full set of its tasks, then diffs (swarmkit's assignments.go).

Used by the Dispatcher, one `AssignmentSet` per session. Pure: it turns store changes into the
next `Assignments` frame, or None when nothing the agent acts on changed.

A task is the agent's while it is on the node, at least ASSIGNED, and not finished for good
(terminal *and* desired terminal): the agent must still run it, stop it, or report it. A task that
stops being the agent's (deleted, moved off the node, finished for good) is sent in `removed`.
Updates that change only a task's Status or Meta are not re-sent: they are mostly the agent's own
reports echoed back by the store.
"""

from __future__ import annotations

from collections.abc import Iterable

import msgspec

from shoal.api.protocol import Assignments
from shoal.api.states import TaskState
from shoal.api.types import EPOCH, Task, TaskStatus, Version
from shoal.store.protocol import Change


def is_agents(task: Task, node_id: str) -> bool:
    """Whether `task` belongs in the assignment set of `node_id`."""
    if task.node_id != node_id or task.status.state < TaskState.ASSIGNED:
        return False
    return not (task.status.state.terminal and task.desired_state.terminal)


def _stable(task: Task) -> Task:
    """The task without the fields the agent does not act on (its own status, store metadata)."""
    return msgspec.structs.replace(task, status=TaskStatus(), version=Version(), updated_at=EPOCH)


class AssignmentSet:
    def __init__(self, node_id: str) -> None:
        self.node_id = node_id
        self._sent: dict[str, Task] = {}  # task id -> stable view last sent

    def full(self, tasks: Iterable[Task]) -> Assignments:
        """The complete set (first frame after Registered); resets what was sent."""
        mine = sorted((t for t in tasks if is_agents(t, self.node_id)), key=lambda t: t.id)
        self._sent = {t.id: _stable(t) for t in mine}
        return Assignments(full=True, tasks=mine)

    def diff(self, changes: Iterable[Change]) -> Assignments | None:
        """The incremental frame for a batch of Task changes, or None if the agent needs nothing."""
        latest: dict[str, tuple[Task, bool]] = {}
        for change in changes:
            if isinstance(change.obj, Task):
                latest[change.obj.id] = (change.obj, change.action == "delete")
        updated: list[Task] = []
        removed: list[str] = []
        for task_id, (task, deleted) in latest.items():
            if deleted or not is_agents(task, self.node_id):
                if self._sent.pop(task_id, None) is not None:
                    removed.append(task_id)
                continue
            stable = _stable(task)
            if self._sent.get(task_id) != stable:
                self._sent[task_id] = stable
                updated.append(task)
        if not updated and not removed:
            return None
        return Assignments(full=False, tasks=updated, removed=removed)

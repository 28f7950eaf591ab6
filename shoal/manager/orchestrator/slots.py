"""Reading a service's tasks as slots: which task is current, which are stopping or history.

Called by the plan functions (replicated: slots keyed by number; global: keyed by node ID). A slot
is "where one replica lives"; its tasks are attempts at it (DESIGN.md §3). Everything here is
derived from the stored tasks alone, so a new leader sees exactly what the old one saw.

A task of a slot is, by its desired state and whether it has stopped (`is_stopped`):

| desired          | stopped? | role      | meaning                                               |
|------------------|----------|-----------|-------------------------------------------------------|
| <= running       | any      | live      | the attempt wanted (maybe dead: restart pending/refused) |
| shutdown         | no       | stopping  | being replaced (stop-first: its replacement waits)    |
| shutdown         | yes      | history   | kept for `service ps`, up to the retention limit      |
| remove           | no       | removing  | scaled down / service deleted, waiting to stop        |
| remove           | yes      | removing  | deleted by the next plan                              |
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass

from shoal.api.states import TaskState
from shoal.api.types import Node, Service, Task

NodeMap = Mapping[str, Node]


def node_invalid(node: Node | None) -> bool:
    """No task should run there: the node is gone, down or drained (swarmkit's InvalidNode)."""
    return node is None or node.status.state == "down" or node.spec.availability == "drain"


def node_gone(task: Task, nodes: NodeMap) -> bool:
    """The task's node is deleted or down, so the task will never report stopping."""
    if not task.node_id:
        return False
    node = nodes.get(task.node_id)
    return node is None or node.status.state == "down"


def is_stopped(task: Task, nodes: NodeMap) -> bool:
    """The task no longer runs and never will: a replacement may start, a removal may delete it."""
    # Before ASSIGNED no agent has it, so nothing is running to wait for.
    return task.status.state.terminal or task.status.state < TaskState.ASSIGNED or node_gone(task, nodes)


def is_dirty(task: Task, service: Service) -> bool:
    """The task was made from another spec than the service's current one.

    The service's Version.Index moves on every write of the service, so an unequal
    service_version is only a hint; the task spec itself decides.
    """
    if task.service_version == service.version.index:
        return False
    return task.spec != service.spec.task_template


def age_key(task: Task) -> tuple[object, str]:
    """Oldest first. The ID breaks ties so the order (and so the plan) is deterministic."""
    return (task.created_at, task.id)


@dataclass(frozen=True)
class SlotView:
    live: Task | None
    extra_live: tuple[Task, ...]  # more than one live task (a crash between writes): shut these
    stopping: tuple[Task, ...]
    history: tuple[Task, ...]  # oldest first
    removing: tuple[Task, ...]

    @property
    def occupied(self) -> bool:
        """Counts as a replica: something runs or is meant to, or a stop-first replacement waits."""
        return self.live is not None or bool(self.stopping)


def view_slot(tasks: Iterable[Task], nodes: NodeMap) -> SlotView:
    live: list[Task] = []
    stopping: list[Task] = []
    history: list[Task] = []
    removing: list[Task] = []
    for task in sorted(tasks, key=age_key):
        if task.desired_state >= TaskState.REMOVE:
            removing.append(task)
        elif task.desired_state <= TaskState.RUNNING:
            live.append(task)
        elif is_stopped(task, nodes):
            history.append(task)
        else:
            stopping.append(task)
    # Of several live tasks keep one that still runs, else the newest.
    live.sort(key=lambda t: (not t.status.state.terminal, age_key(t)))
    current = live[-1] if live else None
    return SlotView(current, tuple(live[:-1]), tuple(stopping), tuple(history), tuple(removing))


def group_by_slot(tasks: Iterable[Task]) -> dict[int, list[Task]]:
    slots: dict[int, list[Task]] = {}
    for task in tasks:
        slots.setdefault(task.slot, []).append(task)
    return slots


def group_by_node(tasks: Iterable[Task]) -> dict[str, list[Task]]:
    by_node: dict[str, list[Task]] = {}
    for task in tasks:
        by_node.setdefault(task.node_id, []).append(task)
    return by_node

"""Per-node scheduling state (swarmkit's nodeinfo.go): what a node has left and what runs on it.

The Scheduler component keeps one `NodeInfo` per node, updated incrementally from store
watches; `schedule()` works on copy-on-write views of them so that deciding never mutates the
component's cache. Only tasks in an *active* state (ASSIGNED..RUNNING, `TaskState.active`) hold a
node's resources and count towards spread; a task leaves its node's counts the moment it is
observed terminal, deleted or moved.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field

from shoal.api.types import Node, Task


def task_reservations(task: Task) -> tuple[int, int]:
    """(nano_cpus, memory_bytes) that a task reserves on its node."""
    resources = task.spec.resources
    reservations = resources.reservations if resources else None
    if reservations is None:
        return 0, 0
    return reservations.nano_cpus, reservations.memory_bytes


@dataclass(slots=True)
class NodeInfo:
    """A node and the active tasks placed on it (by task id -> (service id, cpu, memory))."""

    node: Node
    available_nano_cpus: int
    available_memory_bytes: int
    service_counts: dict[str, int] = field(default_factory=dict)
    active_tasks: int = 0
    tasks: dict[str, tuple[str, int, int]] = field(default_factory=dict)

    @classmethod
    def of(cls, node: Node, tasks: Iterable[Task] = ()) -> NodeInfo:
        res = node.description.resources
        info = cls(node=node, available_nano_cpus=res.nano_cpus, available_memory_bytes=res.memory_bytes)
        for task in tasks:
            info.add_task(task)
        return info

    @property
    def id(self) -> str:
        return self.node.id

    def copy(self) -> NodeInfo:
        return NodeInfo(
            node=self.node,
            available_nano_cpus=self.available_nano_cpus,
            available_memory_bytes=self.available_memory_bytes,
            service_counts=dict(self.service_counts),
            active_tasks=self.active_tasks,
            tasks=dict(self.tasks),
        )

    def set_node(self, node: Node) -> None:
        """A new version of the node: capacity may have changed, reservations stay."""
        old, new = self.node.description.resources, node.description.resources
        self.available_nano_cpus += new.nano_cpus - old.nano_cpus
        self.available_memory_bytes += new.memory_bytes - old.memory_bytes
        self.node = node

    def add_task(self, task: Task) -> bool:
        """Count an active task on this node (idempotent by task id). False if not counted."""
        if task.id in self.tasks or not task.status.state.active:
            return False
        cpu, mem = task_reservations(task)
        self.tasks[task.id] = (task.service_id, cpu, mem)
        self.available_nano_cpus -= cpu
        self.available_memory_bytes -= mem
        self.service_counts[task.service_id] = self.service_counts.get(task.service_id, 0) + 1
        self.active_tasks += 1
        return True

    def place(self, task_id: str, service_id: str, nano_cpus: int, memory_bytes: int) -> None:
        """Count a task the scheduler is placing here (it is not ASSIGNED in the store yet)."""
        self.tasks[task_id] = (service_id, nano_cpus, memory_bytes)
        self.available_nano_cpus -= nano_cpus
        self.available_memory_bytes -= memory_bytes
        self.service_counts[service_id] = self.service_counts.get(service_id, 0) + 1
        self.active_tasks += 1

    def remove_task(self, task_id: str) -> bool:
        """Release a task's resources and counts (no-op if it is not counted here)."""
        entry = self.tasks.pop(task_id, None)
        if entry is None:
            return False
        service_id, cpu, mem = entry
        self.available_nano_cpus += cpu
        self.available_memory_bytes += mem
        left = self.service_counts[service_id] - 1
        if left:
            self.service_counts[service_id] = left
        else:
            del self.service_counts[service_id]
        self.active_tasks -= 1
        return True


def build_node_infos(nodes: Iterable[Node], tasks: Iterable[Task]) -> dict[str, NodeInfo]:
    """NodeInfos for `nodes`, counting each active task on the node its NodeID names."""
    infos = {node.id: NodeInfo.of(node) for node in nodes}
    for task in tasks:
        info = infos.get(task.node_id)
        if info is not None:
            info.add_task(task)
    return infos


class Workspace:
    """Copy-on-write view over NodeInfos: reads see the originals until a node is first changed.

    This keeps `schedule()` pure without copying every node's counts on every tick.
    """

    def __init__(self, infos: Mapping[str, NodeInfo]) -> None:
        self._base = infos
        self._changed: dict[str, NodeInfo] = {}

    def __contains__(self, node_id: str) -> bool:
        return node_id in self._base

    def ids(self) -> list[str]:
        return sorted(self._base)

    def get(self, node_id: str) -> NodeInfo:
        return self._changed.get(node_id) or self._base[node_id]

    def mutable(self, node_id: str) -> NodeInfo:
        info = self._changed.get(node_id)
        if info is None:
            info = self._changed[node_id] = self._base[node_id].copy()
        return info

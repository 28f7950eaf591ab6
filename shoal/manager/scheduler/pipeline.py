"""Pure placement: `schedule(tasks, node_infos) -> Decisions` (decide purely, DESIGN.md §5.1).

Called by the Scheduler component on every tick, and by tests directly. It never writes and never
mutates the NodeInfos it is given (a copy-on-write `Workspace` holds the tentative placements).

Tasks are grouped by (service, spec); a group is placed one task at a time on a tree of placers:
  - a leaf holds the feasible nodes in a heap keyed by (tasks of this service, active tasks,
    node id): spread, then least loaded, then a deterministic tie-break. Placing pops the best
    node, charges it, re-checks only that node's dynamic filters and pushes it back if it still
    fits: O(log n) per task, never a rescan of all nodes.
  - with placement preferences (spread=node.labels.X, nested in order) each level is a heap of
    branches, one per label value, keyed by the service's task count in the branch, so the branch
    totals equalise as swarmkit's decision tree does; nodes without the label form their own
    branch (value None); a branch that runs out of room drops out and the rest share its tasks.
Pre-assigned tasks (global services: NodeID already set) are only checked against their node.
"""

from __future__ import annotations

import heapq
from collections import Counter
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field

import msgspec

from shoal.api.types import Task
from shoal.manager.scheduler.constraints import node_attribute
from shoal.manager.scheduler.filters import (
    HostPortTable,
    Requirements,
    check_all,
    check_dynamic,
    check_static,
    explain,
)
from shoal.manager.scheduler.nodeinfo import NodeInfo, Workspace


@dataclass(slots=True)
class Decisions:
    """The outcome of one scheduling pass: task id -> node id, and task id -> why not."""

    assigned: dict[str, str] = field(default_factory=dict)
    unplaceable: dict[str, str] = field(default_factory=dict)


class _Leaf:
    """Feasible nodes of one branch, best first."""

    def __init__(self, ws: Workspace, req: Requirements, node_ids: Iterable[str]) -> None:
        self._ws, self._req = ws, req
        self._heap = [self._key(ws.get(nid)) for nid in node_ids]
        heapq.heapify(self._heap)
        self.count: int = sum(ws.get(nid).service_counts.get(req.service_id, 0) for nid in node_ids)

    def _key(self, info: NodeInfo) -> tuple[int, int, str]:
        return info.service_counts.get(self._req.service_id, 0), info.active_tasks, info.id

    def place(self, task_id: str, failures: dict[str, str]) -> str | None:
        """Charge the best node with one task; None when no node here has room left."""
        if not self._heap:
            return None
        _, _, node_id = heapq.heappop(self._heap)
        info = self._ws.mutable(node_id)
        req = self._req
        info.place(task_id, req.service_id, req.nano_cpus, req.memory_bytes)
        self.count += 1
        reason = check_dynamic(req, info)
        if reason is None:
            heapq.heappush(self._heap, self._key(info))
        else:
            failures[node_id] = reason
        return node_id


class _Branch:
    """One level of placement preferences: children keyed by the service's tasks under them."""

    def __init__(self, children: dict[str | None, _Leaf | _Branch]) -> None:
        self._children = children
        # None (nodes without the label) sorts after every value, deterministically.
        self._heap = [(c.count, v is None, v or "", v) for v, c in children.items()]
        heapq.heapify(self._heap)
        self.count: int = sum(c.count for c in children.values())

    def place(self, task_id: str, failures: dict[str, str]) -> str | None:
        while self._heap:
            _, missing, label, value = heapq.heappop(self._heap)
            child = self._children[value]
            node_id = child.place(task_id, failures)
            if node_id is not None:
                self.count += 1
                heapq.heappush(self._heap, (child.count, missing, label, value))
                return node_id
            # The child is full: drop it so its share goes to its siblings.
        return None


class _PassCache:
    """What one `schedule()` call computes once and every group shares: the nodes that pass the
    static filters (ready, constraints, platform) per distinct set of them, and node attributes
    for spread. Static filters cannot change during a pass (no node is written), so this is exact."""

    def __init__(self, ws: Workspace) -> None:
        self._ws = ws
        self._ids = ws.ids()
        self._static: dict[tuple[object, ...], list[str]] = {}
        self._attrs: dict[tuple[str, str], str | None] = {}

    def static_ok(self, req: Requirements) -> list[str]:
        key = (req.constraints, req.constraints_valid, req.platforms)
        ids = self._static.get(key)
        if ids is None:
            ws = self._ws
            ids = self._static[key] = [nid for nid in self._ids if check_static(req, ws.get(nid)) is None]
        return ids

    def attribute(self, node_id: str, key: str) -> str | None:
        k = (node_id, key)
        try:
            return self._attrs[k]
        except KeyError:
            value = self._attrs[k] = node_attribute(self._ws.get(node_id).node, key)
            return value


def _tree(ws: Workspace, req: Requirements, node_ids: list[str], cache: _PassCache,
          depth: int = 0) -> _Leaf | _Branch:
    if depth >= len(req.spread_descriptors):
        return _Leaf(ws, req, node_ids)
    key = req.spread_descriptors[depth]
    groups: dict[str | None, list[str]] = {}
    attribute = cache.attribute
    for nid in node_ids:
        groups.setdefault(attribute(nid, key), []).append(nid)
    return _Branch({value: _tree(ws, req, ids, cache, depth + 1) for value, ids in groups.items()})


def _place_group(ws: Workspace, node_ids: list[str], tasks: list[Task], out: Decisions,
                 cache: _PassCache, port_table: HostPortTable | None) -> None:
    """Place the tasks of one group (same service and spec) over all nodes.

    Only nodes that pass the (cached) static filters are checked, and only dynamically; why the
    others were refused is worked out only if the group cannot be placed (the explanation)."""
    req = Requirements.of(tasks[0], port_table)
    failures: dict[str, str] = {}
    feasible = [nid for nid in cache.static_ok(req) if check_dynamic(req, ws.get(nid)) is None]
    root = _tree(ws, req, feasible, cache)
    for index, task in enumerate(tasks):
        node_id = root.place(task.id, failures)
        if node_id is None:
            # Nothing has room left: the rest of the group shares the same explanation, which is
            # the pipeline's first refusal on every node, as things stand now.
            reasons = (check_all(req, ws.get(nid)) for nid in node_ids)
            message = explain(Counter(r for r in reasons if r is not None))
            for rest in tasks[index:]:
                out.unplaceable[rest.id] = message
            return
        out.assigned[task.id] = node_id


def _place_preassigned(ws: Workspace, task: Task, out: Decisions,
                       port_table: HostPortTable | None) -> None:
    if task.node_id not in ws:
        out.unplaceable[task.id] = explain({})
        return
    req = Requirements.of(task, port_table)
    reason = check_all(req, ws.get(task.node_id))
    if reason is not None:
        out.unplaceable[task.id] = explain({reason: 1})
        return
    ws.mutable(task.node_id).place(task.id, req.service_id, req.nano_cpus, req.memory_bytes)
    out.assigned[task.id] = task.node_id


def group_key(task: Task) -> tuple[str, bytes]:
    """Tasks with the same key need the same of a node: same service, same task spec."""
    return task.service_id, msgspec.msgpack.encode(task.spec)


def schedule(tasks: Sequence[Task], node_infos: Mapping[str, NodeInfo],
             port_table: HostPortTable | None = None) -> Decisions:
    """Place `tasks` on the nodes of `node_infos`; deterministic for a given input.

    `port_table` (service ID -> host-mode published ports) turns on the host-port filter: a node
    already running a task that publishes the same port in host mode cannot take another.

    Pre-assigned tasks are validated first (they already own their node), then groups in order of
    their key, each group's tasks by (slot, id).
    """
    ws = Workspace(node_infos)
    out = Decisions()
    groups: dict[tuple[str, bytes], list[Task]] = {}
    for task in sorted(tasks, key=lambda t: (t.slot, t.id)):
        if task.node_id:
            _place_preassigned(ws, task, out, port_table)
        else:
            groups.setdefault(group_key(task), []).append(task)
    node_ids = ws.ids()
    cache = _PassCache(ws)
    for key in sorted(groups):
        _place_group(ws, node_ids, groups[key], out, cache, port_table)
    return out

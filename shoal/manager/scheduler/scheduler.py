"""The Scheduler component: PENDING tasks -> ASSIGNED on a node, or an explanation on the task.

Started and stopped by manager/manager.py (leader only). It snapshots Nodes and Tasks and watches
both atomically, keeps one NodeInfo per node and the set of schedulable tasks up to date from the
watch (no rescans), and on each tick runs the pure `schedule()` over them. Ticks are debounced
(~5 ms after the first change) so a burst of new tasks is placed as one group and committed
in one store transaction.

Schedulable: Status.State PENDING and DesiredState READY or RUNNING (READY: a delayed restart,
which swarmkit also places ahead of time). Tasks with NodeID preset (global services) are only
validated against their node. A task that cannot be placed stays PENDING with Status.Err set to
Swarm's "no suitable node (...)" message; it is written only when the message changes, and the
task is retried on the next tick, which any node change or freed resource triggers.
"""

from __future__ import annotations

import logging

import msgspec

from shoal.api.clock import Clock
from shoal.api.states import TaskState
from shoal.api.types import Node, Service, Task, TaskStatus
from shoal.manager.scheduler.filters import HostPort, host_ports_of
from shoal.manager.scheduler.nodeinfo import NodeInfo, build_node_infos, task_reservations
from shoal.manager.scheduler.pipeline import Decisions, schedule
from shoal.manager.ticker import TickLoop
from shoal.store.protocol import Change, ReadTx, Store, WriteTx

log = logging.getLogger(__name__)

ASSIGNED_MESSAGE = "scheduler assigned task to node"
_SCHEDULABLE_DESIRED = (TaskState.READY, TaskState.RUNNING)
RETRY_AFTER_ERROR_S = 0.5


def is_schedulable(task: Task) -> bool:
    return task.status.state == TaskState.PENDING and task.desired_state in _SCHEDULABLE_DESIRED


class Scheduler:
    """Component (start/stop). `tick()` is public so tests can drive one pass deterministically."""

    def __init__(self, store: Store, clock: Clock, *, debounce_s: float = 0.005) -> None:
        self._store, self._clock, self._debounce_s = store, clock, debounce_s
        self._infos: dict[str, NodeInfo] = {}
        self._task_node: dict[str, str] = {}  # task id -> the node whose NodeInfo counts it
        self._pending: dict[str, Task] = {}
        self._ports: dict[str, frozenset[HostPort]] = {}  # service ID -> host-mode published ports
        self._loop = TickLoop("scheduler", self.tick, clock, debounce_s=debounce_s,
                              retry_s=RETRY_AFTER_ERROR_S)

    async def start(self) -> None:
        def snapshot(tx: ReadTx) -> tuple[list[Node], list[Task], list[Service]]:
            return list(tx.list(Node)), list(tx.list(Task)), list(tx.list(Service))

        (nodes, tasks, services), watch = self._store.view_and_watch(
            snapshot, kinds=(Node, Task, Service))
        self._infos = build_node_infos(nodes, tasks)
        for service in services:
            self._on_service(service, deleted=False)
        for task in tasks:
            self._on_task(task, deleted=False)
        self._loop.start(watch, self._observe)

    async def stop(self) -> None:
        await self._loop.stop()

    # ------------------------------------------------------------------------------ cache upkeep
    def _observe(self, changes: list[Change]) -> None:
        for change in changes:
            self._apply(change)

    def _apply(self, change: Change) -> None:
        obj = change.obj
        if isinstance(obj, Task):
            self._on_task(obj, deleted=change.action == "delete")
        elif isinstance(obj, Node):
            self._on_node(obj, deleted=change.action == "delete")
        elif isinstance(obj, Service):
            self._on_service(obj, deleted=change.action == "delete")

    def _on_service(self, service: Service, *, deleted: bool) -> None:
        """Keep the host-mode ports table (the host-port filter) in step with the services."""
        ports = frozenset() if deleted else host_ports_of(service)
        if ports:
            changed = self._ports.get(service.id) != ports
            self._ports[service.id] = ports
        else:
            changed = self._ports.pop(service.id, None) is not None
        if changed and self._pending:
            self._loop.wake()

    def _on_task(self, task: Task, *, deleted: bool) -> None:
        """Re-derive this task's place in the cache from its latest value (idempotent)."""
        previous = self._task_node.pop(task.id, None)
        freed = previous is not None and self._infos[previous].remove_task(task.id)
        info = None if deleted else self._infos.get(task.node_id)
        if info is not None and info.add_task(task):
            self._task_node[task.id] = task.node_id
        if not deleted and is_schedulable(task):
            self._pending[task.id] = task
            self._loop.wake()
        elif self._pending.pop(task.id, None) is not None or (freed and self._pending):
            self._loop.wake()

    def _on_node(self, node: Node, *, deleted: bool) -> None:
        info = self._infos.get(node.id)
        if deleted:
            if info is not None:
                for task_id in list(info.tasks):
                    self._task_node.pop(task_id, None)
                del self._infos[node.id]
        elif info is None:
            self._infos[node.id] = NodeInfo.of(node)
        else:
            info.set_node(node)
        if self._pending:
            self._loop.wake()

    # ------------------------------------------------------------------------------------ ticks
    async def tick(self) -> Decisions:
        """Place every schedulable task once and commit the outcome in one transaction."""
        if not self._pending:
            return Decisions()
        decisions = schedule(list(self._pending.values()), self._infos, self._ports)
        placed = {tid: self._pending.pop(tid) for tid in decisions.assigned}
        for tid, node_id in decisions.assigned.items():
            # Count the placement now so the next tick sees it before the watch echoes it back.
            cpu, mem = task_reservations(placed[tid])
            self._infos[node_id].place(tid, placed[tid].service_id, cpu, mem)
            self._task_node[tid] = node_id
        errors = {tid: msg for tid, msg in decisions.unplaceable.items()
                  if self._pending[tid].status.err != msg}
        if not decisions.assigned and not errors:
            return decisions
        try:
            await self._store.update(lambda tx: self._commit(tx, decisions.assigned, errors))
        finally:
            # Whatever was skipped or failed is re-derived from the store's current value.
            view = self._store.view()
            for tid, task in placed.items():
                current = view.get(Task, tid)
                if current is None or current.node_id != decisions.assigned[tid] or \
                        current.status.state != TaskState.ASSIGNED:
                    self._on_task(current or task, deleted=current is None)
        return decisions

    def _commit(self, tx: WriteTx, assigned: dict[str, str], errors: dict[str, str]) -> None:
        now = self._clock.now()
        for tid, node_id in assigned.items():
            task = tx.get(Task, tid)
            # Skip a task that changed since the decision (deleted, shut down, already placed).
            if task is None or not is_schedulable(task) or task.node_id not in ("", node_id):
                continue
            status = TaskStatus(timestamp=now, state=TaskState.ASSIGNED, message=ASSIGNED_MESSAGE)
            tx.update(msgspec.structs.replace(task, node_id=node_id, status=status))
        for tid, message in errors.items():
            task = tx.get(Task, tid)
            if task is None or not is_schedulable(task) or task.status.err == message:
                continue
            status = msgspec.structs.replace(task.status, err=message, timestamp=now)
            tx.update(msgspec.structs.replace(task, status=status))

"""The Allocator component: NEW -> PENDING once a task's resources are allocated.

Started and stopped by manager/manager.py (leader only), between the orchestrators and the
scheduler. A NEW task whose DesiredState is READY or RUNNING gets an address on each of its
networks (shoal/manager/netalloc: its spec's networks, plus ingress when its service publishes an
ingress port) as Task.NetworksAttachments and moves to PENDING with "pending task scheduling".
When a network has no free address the task stays NEW with Status.Err saying so (`service ps`
shows it) and is retried when addresses are freed: a task dies or is deleted, or a service changes.
Tasks the orchestrator already wants stopped stay NEW: they will never run, so allocating is waste.
Every node also gets its own address on the ingress network (Node.Attachments, see
shoal/manager/netalloc/nodes.py), freed when the node is removed. Which task or node holds which
address is rebuilt from the store at start. Changes are gathered (whatever arrived before the next
pass, no fixed wait) and committed in one transaction.
"""

from __future__ import annotations

import logging

import msgspec

from shoal.api.clock import Clock
from shoal.api.ipam import address_of, find_ingress, holds_addresses
from shoal.api.states import TaskState
from shoal.api.types import Network, Node, Service, Task, TaskStatus
from shoal.manager.netalloc.nodes import settle_node
from shoal.manager.netalloc.tasks import NODE_OWNER, AllocationError, TaskAddresses, attach
from shoal.manager.ticker import TickLoop
from shoal.store.protocol import Change, ReadTx, Store, WriteTx

log = logging.getLogger(__name__)

PENDING_MESSAGE = "pending task scheduling"
_ALLOCATABLE_DESIRED = (TaskState.READY, TaskState.RUNNING)
RETRY_AFTER_ERROR_S = 0.5


def needs_allocation(task: Task) -> bool:
    return task.status.state == TaskState.NEW and task.desired_state in _ALLOCATABLE_DESIRED


class Allocator:
    """Component (start/stop). `tick()` is public so tests can drive one pass."""

    def __init__(self, store: Store, clock: Clock, *, debounce_s: float = 0.0) -> None:
        self._store, self._clock, self._debounce_s = store, clock, debounce_s
        self._dirty: set[str] = set()
        self._dirty_nodes: set[str] = set()
        self._all_nodes = False  # the ingress network changed: settle every node
        self._waiting: set[str] = set()  # tasks NEW for want of an address
        self._held = TaskAddresses()
        self._loop = TickLoop("allocator", self.tick, clock, debounce_s=debounce_s,
                              retry_s=RETRY_AFTER_ERROR_S)

    async def start(self) -> None:
        def snapshot(tx: ReadTx) -> list[str]:
            tasks = tx.list(Task)
            self._held.load(tasks, tx.list(Node))
            return [t.id for t in tasks if needs_allocation(t)]

        ids, watch = self._store.view_and_watch(snapshot, kinds=(Task, Service, Node, Network))
        self._all_nodes = True
        self._mark(ids)
        self._loop.start(watch, lambda changes: self._mark(self._observe(changes)))

    async def stop(self) -> None:
        await self._loop.stop()

    def _mark(self, ids: list[str]) -> None:
        if ids or self._dirty_nodes or self._all_nodes:
            self._dirty.update(ids)
            self._loop.wake()

    def _observe(self, changes: list[Change]) -> list[str]:
        """Task IDs to (re)try: new tasks, and the waiting ones when addresses may have been freed."""
        marked: list[str] = []
        freed = False
        for change in changes:
            obj = change.obj
            if isinstance(obj, Service):
                freed = True  # a VIP may have gone with the service or its networks
                self._observe_vips(obj)
            elif isinstance(obj, Node):
                freed = self._observe_node(change) or freed
            elif isinstance(obj, Network):
                if obj.spec.ingress:
                    self._all_nodes = True
                if change.action == "delete":
                    self._held.forget_network(obj.id)
            elif isinstance(obj, Task):
                if change.action == "delete" or not holds_addresses(obj):
                    freed = self._held.release(obj) or freed
                    if change.action == "delete":
                        self._waiting.discard(obj.id)
                elif needs_allocation(obj):
                    marked.append(obj.id)
        if freed:
            marked.extend(self._waiting)
        return marked

    def _observe_node(self, change: Change) -> bool:
        """Note a node to settle; whether addresses were freed (the node was removed)."""
        node = change.obj
        assert isinstance(node, Node)
        if change.action == "delete":
            self._dirty_nodes.discard(node.id)
            return self._held.release_node(node)
        if not node.attachments:
            self._dirty_nodes.add(node.id)
        return False

    def _observe_vips(self, service: Service) -> None:
        """A VIP the API server put on a node's address moves that node."""
        for vip in (service.endpoint.virtual_ips or ()) if service.endpoint is not None else ():
            addr = address_of(vip.addr)
            owner = self._held.owner(vip.network_id, addr) if addr is not None else None
            if owner is not None and owner.startswith(NODE_OWNER):
                self._dirty_nodes.add(owner.removeprefix(NODE_OWNER))

    async def tick(self) -> int:
        """Give dirty nodes their ingress address and move every dirty NEW task to PENDING;
        returns how many tasks moved."""
        ids, self._dirty = self._dirty, set()
        nodes, self._dirty_nodes = self._dirty_nodes, set()
        all_nodes, self._all_nodes = self._all_nodes, False
        if not ids and not nodes and not all_nodes:
            return 0
        try:
            return await self._store.update(
                lambda tx: self._commit(tx, sorted(ids), None if all_nodes else sorted(nodes)))
        except BaseException:
            self._dirty |= ids  # level-triggered: retry them on the next tick
            self._dirty_nodes |= nodes
            self._all_nodes |= all_nodes
            view = self._store.view()  # forget what the failed commit took
            self._held.load(view.list(Task), view.list(Node))
            raise

    def _settle_nodes(self, tx: WriteTx, node_ids: list[str] | None) -> None:
        """Nodes (None: all) get their ingress address; a full ingress subnet is logged."""
        ingress = find_ingress(tx.list(Network))
        nodes = list(tx.list(Node)) if node_ids is None else [tx.get(Node, n) for n in node_ids]
        for node in nodes:
            if node is None:
                continue
            try:
                settled = settle_node(tx, node, ingress, self._held)
            except AllocationError as e:
                log.warning("%s", e)
                continue
            if settled is not None:
                tx.update(settled)

    def _commit(self, tx: WriteTx, ids: list[str], node_ids: list[str] | None) -> int:
        self._settle_nodes(tx, node_ids)
        now, moved = self._clock.now(), 0
        for tid in ids:
            task = tx.get(Task, tid)
            if task is None or not needs_allocation(task):
                continue  # re-read in the transaction: it may have changed since it was marked
            try:
                allocated = attach(tx, task, self._held)
            except AllocationError as e:
                self._waiting.add(tid)
                if task.status.err != str(e):
                    status = TaskStatus(timestamp=now, state=TaskState.NEW,
                                        message="pending network allocation", err=str(e))
                    tx.update(msgspec.structs.replace(task, status=status))
                continue
            self._waiting.discard(tid)
            status = TaskStatus(timestamp=now, state=TaskState.PENDING, message=PENDING_MESSAGE)
            tx.update(msgspec.structs.replace(allocated, status=status))
            moved += 1
        return moved

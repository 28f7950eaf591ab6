"""The orchestrator component: watches the store, plans per service, applies each plan in one txn.

The manager starts one `Orchestrator(store, clock)` on the leader (manager/component.py
lifecycle). One component handles replicated and global services and the tasks of deleted
services, because all three are keyed by service ID and share the reaper; the decisions stay
separate, pure functions (`modes.plan_service`).

Keys (service IDs) are marked dirty by a store watch (DESIGN.md §5.2):

| change                   | services marked                                           |
|--------------------------|-----------------------------------------------------------|
| Service created/updated/deleted | that service                                       |
| Task (any)               | its ServiceID (a status report may ask for a restart)     |
| Node (any)               | every global service, and the services with tasks on it  |
| Cluster                  | every service (the history limit may have changed)        |
| start                    | every service, and every ServiceID a task still names     |

`reconcile(service_id)` reads a fresh view, plans, and applies the plan with `apply_plan`, which
re-checks inside the transaction that the service and every task touched are still the versions
planned from; if not, the plan is dropped and the key re-run shortly (the change that conflicted
has marked it too). The orchestrator writes only DesiredState, and Status only on creation.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from functools import partial

from shoal.api.clock import Clock
from shoal.api.defaults import TASK_HISTORY_LIMIT
from shoal.api.errors import NotFound, SequenceConflict
from shoal.api.ids import new_id as random_id
from shoal.api.types import Cluster, Meta, Node, Service, Task
from shoal.manager.loop import ReconcileLoop
from shoal.manager.orchestrator.modes import is_global, plan_service
from shoal.manager.orchestrator.plan import IdFactory, Plan
from shoal.store.protocol import Change, ReadTx, Store, Watch, WriteTx

log = logging.getLogger(__name__)

CONFLICT_RETRY_S = 0.01
WATCHED_KINDS: tuple[type[Meta], ...] = (Service, Task, Node, Cluster)


def history_limit(view: ReadTx) -> int:
    for cluster in view.list(Cluster):
        limit = cluster.spec.orchestration.task_history_retention_limit
        return TASK_HISTORY_LIMIT if limit is None else limit
    return TASK_HISTORY_LIMIT


def apply_plan(tx: WriteTx, plan: Plan, service_id: str, service_version: int | None) -> None:
    """Write `plan` if nothing it was made from changed; else SequenceConflict (nothing written)."""
    current = tx.get(Service, service_id)
    if (current.version.index if current else None) != service_version:
        raise SequenceConflict()
    try:
        for task in plan.delete:
            stored = tx.get(Task, task.id)
            if stored is None or stored.version.index != task.version.index:
                raise SequenceConflict()
            tx.delete(Task, task.id)
        for task in plan.update:
            tx.update(task)
        for task in plan.create:
            tx.create(task)
    except NotFound as exc:  # a task planned on was deleted meanwhile
        raise SequenceConflict() from exc


def all_keys(view: ReadTx) -> set[str]:
    keys = {s.id for s in view.list(Service)}
    keys.update(t.service_id for t in view.list(Task) if t.service_id)
    return keys


def keys_of_change(view: ReadTx, change: Change) -> set[str]:
    """The services `change` may affect, read against the current view."""
    obj = change.obj
    if isinstance(obj, Service):
        return {obj.id}
    if isinstance(obj, Task):
        return {obj.service_id} if obj.service_id else set()
    if isinstance(obj, Node):
        tasks: list[Task] = list(view.tasks_of_node(obj.id))
        keys = {t.service_id for t in tasks if t.service_id}
        keys.update(s.id for s in view.list(Service) if is_global(s))
        return keys
    if isinstance(obj, Cluster):
        return {s.id for s in view.list(Service)}
    return set()


class Orchestrator:
    """Replicated + global orchestrator, restart supervisor and task reaper, keyed by service ID."""

    def __init__(self, store: Store, clock: Clock, *, new_id: IdFactory = random_id) -> None:
        self._store = store
        self._clock = clock
        self._new_id = new_id
        self.loop = ReconcileLoop("orchestrator", self.reconcile, clock)
        self._watch: Watch | None = None
        self._pump_task: asyncio.Task[None] | None = None

    async def start(self) -> None:
        keys, watch = self._store.view_and_watch(all_keys, kinds=WATCHED_KINDS)
        self._watch = watch
        self.loop.mark_many(keys)
        await self.loop.start()
        self._pump_task = asyncio.create_task(self._pump(watch), name="orchestrator-watch")

    async def stop(self) -> None:
        if self._watch is not None:
            self._watch.close()
        if self._pump_task is not None:
            self._pump_task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._pump_task
        self._watch = None
        self._pump_task = None
        await self.loop.stop()

    async def _pump(self, watch: Watch) -> None:
        async for changes in watch:
            view = self._store.view()
            keys: set[str] = set()
            for change in changes:
                keys |= keys_of_change(view, change)
            self.loop.mark_many(keys)

    def plan(self, view: ReadTx, service_id: str) -> Plan:
        tasks: list[Task] = list(view.tasks_of_service(service_id))
        return plan_service(view.get(Service, service_id), tasks, view.list(Node), history_limit(view),
                            self._clock.now(), self._new_id)

    async def reconcile(self, service_id: str) -> float | None:
        view = self._store.view()
        service = view.get(Service, service_id)
        plan = self.plan(view, service_id)
        if plan.empty:
            return plan.requeue_after_s
        version = service.version.index if service else None
        try:
            await self._store.update(partial(apply_plan, plan=plan, service_id=service_id,
                                             service_version=version))
        except SequenceConflict:
            log.debug("orchestrator: %s changed while planning; re-planning", service_id)
            return CONFLICT_RETRY_S
        log.debug("orchestrator: %s: created %d, updated %d, deleted %d", service_id,
                  len(plan.create), len(plan.update), len(plan.delete))
        return plan.requeue_after_s

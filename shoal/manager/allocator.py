"""The Allocator component: NEW -> PENDING once a task's resources are allocated.

Started and stopped by manager/manager.py (leader only), between the orchestrators and the
scheduler. Today a task needs nothing allocated, so every NEW task whose DesiredState is READY or
RUNNING moves to PENDING with "pending task scheduling"; network attachments, VIPs and published
ports land in `allocate()` in a later issue (swarmkit's allocator votes in the same place). Tasks
the orchestrator already wants stopped stay NEW: they will never run, so allocating is waste.
Changes are gathered (whatever arrived before the next pass, no fixed wait) and committed in one transaction.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging

import msgspec

from shoal.api.clock import Clock
from shoal.api.states import TaskState
from shoal.api.types import Task, TaskStatus
from shoal.store.protocol import ReadTx, Store, Watch, WriteTx

log = logging.getLogger(__name__)

PENDING_MESSAGE = "pending task scheduling"
_ALLOCATABLE_DESIRED = (TaskState.READY, TaskState.RUNNING)
RETRY_AFTER_ERROR_S = 0.5


def needs_allocation(task: Task) -> bool:
    return task.status.state == TaskState.NEW and task.desired_state in _ALLOCATABLE_DESIRED


def allocate(task: Task) -> Task | None:
    """The task with its resources allocated, or None if it must wait. The seam for networks."""
    return task


class Allocator:
    """Component (start/stop). `tick()` is public so tests can drive one pass."""

    def __init__(self, store: Store, clock: Clock, *, debounce_s: float = 0.0) -> None:
        self._store, self._clock, self._debounce_s = store, clock, debounce_s
        self._dirty: set[str] = set()
        self._wake = asyncio.Event()
        self._watch: Watch | None = None
        self._runners: list[asyncio.Task[None]] = []

    async def start(self) -> None:
        def snapshot(tx: ReadTx) -> list[str]:
            return [t.id for t in tx.list(Task) if needs_allocation(t)]

        ids, self._watch = self._store.view_and_watch(snapshot, kinds=(Task,))
        self._mark(ids)
        self._runners = [asyncio.create_task(self._consume(self._watch), name="allocator-watch"),
                         asyncio.create_task(self._run(), name="allocator-ticks")]

    async def stop(self) -> None:
        if self._watch is not None:
            self._watch.close()
        for runner in self._runners:
            runner.cancel()
        for runner in self._runners:
            with contextlib.suppress(asyncio.CancelledError):
                await runner
        self._runners = []

    def _mark(self, ids: list[str]) -> None:
        if ids:
            self._dirty.update(ids)
            self._wake.set()

    async def _consume(self, watch: Watch) -> None:
        async for changes in watch:
            self._mark([c.obj.id for c in changes if c.action != "delete" and isinstance(c.obj, Task)
                        and needs_allocation(c.obj)])

    async def _run(self) -> None:
        while True:
            await self._wake.wait()
            await self._clock.sleep(self._debounce_s)  # gather a burst into one transaction
            self._wake.clear()
            try:
                await self.tick()
            except Exception:
                log.exception("allocator tick failed; retrying")
                await self._clock.sleep(RETRY_AFTER_ERROR_S)
                self._wake.set()

    async def tick(self) -> int:
        """Move every dirty NEW task to PENDING; returns how many moved."""
        ids, self._dirty = self._dirty, set()
        if not ids:
            return 0
        try:
            return await self._store.update(lambda tx: self._commit(tx, sorted(ids)))
        except BaseException:
            self._dirty |= ids  # level-triggered: retry them on the next tick
            raise

    def _commit(self, tx: WriteTx, ids: list[str]) -> int:
        now, moved = self._clock.now(), 0
        for tid in ids:
            task = tx.get(Task, tid)
            if task is None or not needs_allocation(task):
                continue  # re-read in the transaction: it may have changed since it was marked
            allocated = allocate(task)
            if allocated is None:
                continue
            status = TaskStatus(timestamp=now, state=TaskState.PENDING, message=PENDING_MESSAGE)
            tx.update(msgspec.structs.replace(allocated, status=status))
            moved += 1
        return moved

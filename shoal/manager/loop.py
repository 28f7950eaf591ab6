"""The reconcile loop: keys are marked dirty, one worker reconciles them, errors back off.

Used by every level-triggered manager component (orchestrators now; allocator, scheduler-side
reapers later): a store watch calls `mark(key)`, and the loop calls `reconcile(key)` with no event
payload, so a reconcile must re-read the store and be idempotent (DESIGN.md §5.2).

Rules:
- `mark` is idempotent and coalesces: a key marked ten times before its turn runs once.
- One reconcile per key at a time. A key marked while being reconciled is run again afterwards
  (the reconcile may have read the store before the change that marked it).
- Keys are processed by `concurrency` worker tasks (default 1: sequentially, in mark order). One
  worker is enough for the orchestrators, whose reconciles are short and whose store writes are
  serialised anyway, and it makes the order of work deterministic; a slow reconcile that awaits
  I/O may ask for more.
- A reconcile returning a float asks to be run again after that many seconds (restart delays);
  a returned `None` cancels any such timer. Of two pending timers for a key the earlier wins.
- An exception is logged and the key is retried after an exponential backoff (50 ms doubling,
  capped at 5 s), reset by the next success.

Key states:

| state     | how it gets there                     | leaves when                           |
|-----------|---------------------------------------|---------------------------------------|
| idle      | reconcile done, nothing pending       | `mark`, or a timer fires              |
| dirty     | `mark`                                | a worker takes it                     |
| in flight | a worker took it                      | reconcile returns or raises           |
| timed     | reconcile returned a delay / raised   | the timer fires (-> dirty) or `mark`  |
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Awaitable, Callable

from shoal.api.clock import Clock

log = logging.getLogger(__name__)

BACKOFF_BASE_S = 0.05
BACKOFF_CAP_S = 5.0

Reconcile = Callable[[str], Awaitable[float | None]]


def backoff_s(failures: int) -> float:
    """Delay before retry number `failures` (1-based) of a key whose reconcile raised."""
    return float(min(BACKOFF_CAP_S, BACKOFF_BASE_S * 2 ** max(0, failures - 1)))


class ReconcileLoop:
    def __init__(self, name: str, reconcile: Reconcile, clock: Clock, *, concurrency: int = 1) -> None:
        if concurrency < 1:
            raise ValueError("concurrency must be at least 1")
        self.name = name
        self._reconcile = reconcile
        self._clock = clock
        self._concurrency = concurrency
        self._dirty: dict[str, None] = {}  # an ordered set: keys run in the order first marked
        self._in_flight: set[str] = set()
        self._failures: dict[str, int] = {}
        self._timers: dict[str, tuple[float, asyncio.Task[None]]] = {}  # key -> (deadline, task)
        self._wake = asyncio.Event()
        self._workers: list[asyncio.Task[None]] = []
        self.runs = 0  # completed reconciles (success or failure); for tests and metrics

    # ----------------------------------------------------------------------------------- public
    def mark(self, key: str) -> None:
        """Mark `key` dirty. Cheap and idempotent; call it from watch handlers."""
        self._dirty[key] = None
        self._wake.set()

    def mark_many(self, keys: list[str] | set[str] | tuple[str, ...]) -> None:
        for key in keys:
            self._dirty[key] = None
        self._wake.set()

    def pending(self) -> int:
        """Keys dirty or in flight (timers not counted)."""
        return len(self._dirty) + len(self._in_flight)

    async def start(self) -> None:
        if self._workers:
            return
        for i in range(self._concurrency):
            self._workers.append(asyncio.create_task(self._work(), name=f"{self.name}-worker-{i}"))

    async def stop(self) -> None:
        """Cancel workers and timers and wait for them; dirty keys are dropped."""
        tasks = self._workers + [t for _, t in self._timers.values()]
        self._workers = []
        self._timers.clear()
        for t in tasks:
            t.cancel()
        for t in tasks:
            with contextlib.suppress(asyncio.CancelledError):
                await t

    # --------------------------------------------------------------------------------- workers
    async def _work(self) -> None:
        while True:
            key = await self._next_key()
            try:
                await self._run_one(key)
            finally:
                self._in_flight.discard(key)
                if key in self._dirty:
                    # Marked while in flight: another worker may have skipped it; wake them.
                    self._wake.set()

    async def _next_key(self) -> str:
        while True:
            for key in self._dirty:
                if key not in self._in_flight:
                    del self._dirty[key]
                    self._in_flight.add(key)
                    return key
            # No await between the scan and clear(), so no mark can slip in unseen.
            self._wake.clear()
            await self._wake.wait()

    async def _run_one(self, key: str) -> None:
        self._cancel_timer(key)
        try:
            delay = await self._reconcile(key)
        except asyncio.CancelledError:
            raise
        except Exception:
            failures = self._failures.get(key, 0) + 1
            self._failures[key] = failures
            delay = backoff_s(failures)
            log.exception("%s: reconcile %s failed (attempt %d); retrying in %.2fs",
                          self.name, key, failures, delay)
        else:
            self._failures.pop(key, None)
        self.runs += 1
        if delay is not None:
            self._schedule(key, max(0.0, delay))

    # ---------------------------------------------------------------------------------- timers
    def _schedule(self, key: str, delay_s: float) -> None:
        deadline = self._clock.monotonic() + delay_s
        existing = self._timers.get(key)
        if existing is not None:
            if existing[0] <= deadline:
                return
            existing[1].cancel()
        task = asyncio.create_task(self._fire(key, delay_s), name=f"{self.name}-timer-{key}")
        self._timers[key] = (deadline, task)

    def _cancel_timer(self, key: str) -> None:
        # The reconcile about to run re-decides whether (and when) it needs a timer.
        entry = self._timers.pop(key, None)
        if entry is not None:
            entry[1].cancel()

    async def _fire(self, key: str, delay_s: float) -> None:
        await self._clock.sleep(delay_s)
        entry = self._timers.get(key)
        if entry is not None and entry[1] is asyncio.current_task():
            del self._timers[key]
        self.mark(key)

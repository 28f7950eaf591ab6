"""TickLoop: the run loop shared by the batch components (allocator, scheduler).

Such a component keeps its own cache up to date from a store watch and, whenever something may be
left to do, calls `wake()`; the loop then waits `debounce_s` so that a burst of changes is handled
by one `tick()` (one store transaction), and runs it. A failing tick is logged and retried after
`retry_s`, so the component stays level-triggered. `start()` owns the watch consumer and the tick
task; `stop()` closes the watch and waits for both.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Awaitable, Callable

from shoal.api.clock import Clock
from shoal.store.protocol import Change, Watch

log = logging.getLogger(__name__)


class TickLoop:
    def __init__(self, name: str, tick: Callable[[], Awaitable[object]], clock: Clock, *,
                 debounce_s: float, retry_s: float = 0.5) -> None:
        self._name, self._tick, self._clock = name, tick, clock
        self._debounce_s, self._retry_s = debounce_s, retry_s
        self._wake = asyncio.Event()
        self._watch: Watch | None = None
        self._runners: list[asyncio.Task[None]] = []

    def wake(self) -> None:
        self._wake.set()

    def start(self, watch: Watch, observe: Callable[[list[Change]], None]) -> None:
        """Feed every committed change list of `watch` to `observe`, and run ticks when woken."""
        self._watch = watch
        self._runners = [asyncio.create_task(self._consume(watch, observe), name=f"{self._name}-watch"),
                         asyncio.create_task(self._run(), name=f"{self._name}-ticks")]

    async def stop(self) -> None:
        if self._watch is not None:
            self._watch.close()
        for runner in self._runners:
            runner.cancel()
        for runner in self._runners:
            with contextlib.suppress(asyncio.CancelledError):
                await runner
        self._runners = []

    async def _consume(self, watch: Watch, observe: Callable[[list[Change]], None]) -> None:
        async for changes in watch:
            observe(changes)

    async def _run(self) -> None:
        while True:
            await self._wake.wait()
            await self._clock.sleep(self._debounce_s)  # gather a burst into one transaction
            self._wake.clear()
            try:
                await self._tick()
            except Exception:
                log.exception("%s tick failed; retrying", self._name)
                await self._clock.sleep(self._retry_s)
                self._wake.set()

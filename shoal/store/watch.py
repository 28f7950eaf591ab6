"""Watches over committed changes: a bounded ring of recent transactions and the per-watcher queues.

`SqliteStore` appends every committed transaction to a `ChangeRing` and fans it out to its open
`StoreWatch`es; `store.watch(from_revision)` replays from the ring first. Consumers (orchestrators,
scheduler, dispatcher, API event streams) only see `StoreWatch` through the `Watch` protocol.
"""

from __future__ import annotations

import asyncio
from collections import deque
from collections.abc import Callable, Iterable

from shoal.api.types import Meta
from shoal.store.protocol import Change, Compacted


class ChangeRing:
    """The last ~`limit` changes, kept whole per transaction, for watches that resume from a revision.

    The newest transaction is always kept even if it alone exceeds `limit` (a 100k-task commit),
    so a watcher that saw revision r-1 can always catch up to r.
    """

    def __init__(self, limit: int, revision: int) -> None:
        self._limit = limit
        self._entries: deque[tuple[int, list[Change]]] = deque()
        self._count = 0
        # The oldest revision a watch may resume from: every transaction after it is in the ring.
        self.floor = revision

    def append(self, revision: int, changes: list[Change]) -> None:
        self._entries.append((revision, changes))
        self._count += len(changes)
        while self._count > self._limit and len(self._entries) > 1:
            rev, dropped = self._entries.popleft()
            self._count -= len(dropped)
            self.floor = rev

    def since(self, revision: int) -> list[tuple[int, list[Change]]]:
        """Transactions committed after `revision`; Compacted if some of them are gone."""
        if revision < self.floor:
            raise Compacted(f"revision {revision} is compacted; the oldest kept is {self.floor}")
        return [(rev, chs) for rev, chs in self._entries if rev > revision]


def filter_kinds(changes: list[Change], kinds: tuple[type[Meta], ...] | None) -> list[Change]:
    if kinds is None:
        return changes
    return [c for c in changes if type(c.obj) in kinds]


class StoreWatch:
    """One subscriber: an async iterator of change lists, one list per committed transaction.

    Lists are queued without bound: a consumer that never reads holds memory (the store's writers
    are never slowed by a watcher). `close()` ends the iteration at once, dropping what is queued.
    """

    def __init__(self, kinds: tuple[type[Meta], ...] | None, after: int,
                 on_close: Callable[[StoreWatch], None]) -> None:
        self.kinds = kinds
        self._after = after  # deliver only transactions with a revision above this
        self._on_close = on_close
        self._pending: deque[list[Change]] = deque()
        self._waiter: asyncio.Future[None] | None = None
        self._closed = False

    def deliver(self, revision: int, changes: list[Change]) -> None:
        """Queue one committed transaction (already filtered by kind); called by the store."""
        if self._closed or revision <= self._after or not changes:
            return
        self._pending.append(changes)
        self._wake()

    def replay(self, entries: Iterable[tuple[int, list[Change]]]) -> None:
        for rev, changes in entries:
            self.deliver(rev, filter_kinds(changes, self.kinds))

    def close(self) -> None:
        if self._closed:
            return
        self._closed = True
        self._pending.clear()
        self._on_close(self)
        self._wake()

    def __aiter__(self) -> StoreWatch:
        return self

    async def __anext__(self) -> list[Change]:
        while True:
            if self._closed:
                raise StopAsyncIteration
            if self._pending:
                return self._pending.popleft()
            self._waiter = asyncio.get_running_loop().create_future()
            try:
                await self._waiter
            finally:
                self._waiter = None

    def _wake(self) -> None:
        if self._waiter is not None and not self._waiter.done():
            self._waiter.set_result(None)


def fan_out(watches: Iterable[StoreWatch], revision: int, changes: list[Change]) -> None:
    """Deliver one transaction to every watch, filtering each kind set only once."""
    filtered: dict[tuple[type[Meta], ...], list[Change]] = {}
    for w in list(watches):
        if w.kinds is None:
            w.deliver(revision, changes)
            continue
        chs = filtered.get(w.kinds)
        if chs is None:
            chs = filtered[w.kinds] = filter_kinds(changes, w.kinds)
        w.deliver(revision, chs)

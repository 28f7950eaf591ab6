"""SqliteStore: the Store of shoal/store/protocol.py, kept in memory and made durable in SQLite.

The daemon makes one per host (`D/store.db`) and hands it to the API server, the manager and the
agent, which talk only through its transactions and watches.

- Reads come from memory (`shoal.store.memory.Tables`): `view()` never blocks or copies.
- `update(fn)` runs `fn` synchronously on a buffering `WriteTxn`, writes the net changes and the
  new revision in one SQLite transaction (WAL, synchronous=FULL, so a commit survives kill -9 and
  power loss), then applies them to memory and wakes watchers. Updates are serialised by a lock;
  the SQLite write runs on one worker thread so the event loop keeps serving while it fsyncs.
- Watches resume from a revision out of a ring of the last ~10,000 changes; `watch()` itself raises
  `Compacted` for an older revision (never the iteration).
"""

from __future__ import annotations

import asyncio
import sqlite3
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from functools import partial
from pathlib import Path
from typing import Any, TypeVar

import msgspec

from shoal.api.clock import Clock, SystemClock
from shoal.api.errors import Unavailable
from shoal.api.types import STORED_KINDS, Meta
from shoal.store.memory import ReadView, Tables, WriteTxn
from shoal.store.protocol import Change, ReadTx, WriteTx
from shoal.store.watch import ChangeRing, StoreWatch, fan_out

R = TypeVar("R")

RING_CHANGES = 10_000

_SCHEMA = (
    "CREATE TABLE IF NOT EXISTS objects(kind TEXT NOT NULL, id TEXT NOT NULL, data BLOB NOT NULL,"
    " PRIMARY KEY(kind, id)) WITHOUT ROWID",
    "CREATE TABLE IF NOT EXISTS meta(key TEXT PRIMARY KEY, value INTEGER NOT NULL)",
)
_KIND_BY_NAME: dict[str, type[Meta]] = {k.__name__: k for k in STORED_KINDS}


class SqliteStore:
    """The store. `path` is a file (created with its parent directory) or ":memory:" for tests.

    `clock` stamps CreatedAt/UpdatedAt; `ring_changes` bounds the watch replay ring.
    """

    def __init__(self, path: Path | str, *, clock: Clock | None = None,
                 ring_changes: int = RING_CHANGES) -> None:
        self._path = str(path)
        self._clock: Clock = clock or SystemClock()
        self._ring_changes = ring_changes
        self._tables = Tables()
        self._revision = 0
        self._ring = ChangeRing(ring_changes, 0)
        self._watches: dict[StoreWatch, None] = {}
        self._conn: sqlite3.Connection | None = None
        self._executor: ThreadPoolExecutor | None = None
        self._lock = asyncio.Lock()
        self._encoder = msgspec.msgpack.Encoder()
        self._decoders = {k.__name__: msgspec.msgpack.Decoder(k) for k in STORED_KINDS}

    @property
    def revision(self) -> int:
        """The revision of the last committed transaction (0 for a new store)."""
        return self._revision

    # ----------------------------------------------------------------------------- lifecycle
    async def open(self) -> None:
        """Create the file and tables if needed, then load every object and the revision."""
        if self._conn is not None:
            return
        if self._path != ":memory:":
            Path(self._path).parent.mkdir(parents=True, exist_ok=True)
        self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="shoal-store")
        loop = asyncio.get_running_loop()
        conn, revision, tables = await loop.run_in_executor(self._executor, self._load)
        self._conn, self._revision, self._tables = conn, revision, tables
        self._ring = ChangeRing(self._ring_changes, revision)

    def _load(self) -> tuple[sqlite3.Connection, int, Tables]:
        # isolation_level=None: we issue BEGIN/COMMIT ourselves, one SQL transaction per update().
        conn = sqlite3.connect(self._path, isolation_level=None, check_same_thread=False)
        conn.execute("PRAGMA journal_mode=WAL")
        conn.execute("PRAGMA synchronous=FULL")
        for stmt in _SCHEMA:
            conn.execute(stmt)
        row = conn.execute("SELECT value FROM meta WHERE key = 'revision'").fetchone()
        tables = Tables()
        for kind_name, rows in self._rows_by_kind(conn).items():
            decode = self._decoders[kind_name].decode
            tables.load(decode(data) for data in rows)
        return conn, (row[0] if row else 0), tables

    @staticmethod
    def _rows_by_kind(conn: sqlite3.Connection) -> dict[str, list[bytes]]:
        out: dict[str, list[bytes]] = {name: [] for name in _KIND_BY_NAME}
        for kind_name, data in conn.execute("SELECT kind, data FROM objects"):
            if kind_name in out:  # a kind this version does not know is left alone on disk
                out[kind_name].append(data)
        return out

    async def close(self) -> None:
        """Wait for an in-flight commit, end every watch, release the file."""
        if self._conn is None:
            return
        async with self._lock:
            for w in list(self._watches):
                w.close()
            conn, self._conn = self._conn, None
            conn.close()
            if self._executor is not None:
                self._executor.shutdown(wait=True)
                self._executor = None

    # ---------------------------------------------------------------------------------- reads
    def view(self) -> ReadTx:
        """The committed state now. Valid until the caller next awaits (see ReadView)."""
        return ReadView(self._tables, self._revision)

    # --------------------------------------------------------------------------------- writes
    async def update(self, fn: Callable[[WriteTx], R]) -> R:
        """Run `fn` on a write transaction and commit what it wrote; if `fn` raises, nothing changes."""
        await self._lock.acquire()
        try:
            conn, executor = self._require_open()
            revision = self._revision + 1
            txn = WriteTxn(self._tables, revision, self._clock.now())
            result = fn(txn)
            changes = txn.changes()
            if not changes:
                self._lock.release()
                return result
            fut = asyncio.get_running_loop().run_in_executor(
                executor, self._persist, conn, revision, changes)
        except BaseException:
            if self._lock.locked():
                self._lock.release()
            raise
        # Applying to memory and releasing the lock happen in a callback on the write itself, so a
        # caller cancelled while SQLite commits cannot leave memory behind the disk.
        fut.add_done_callback(partial(self._committed, revision, changes))
        await asyncio.shield(fut)
        return result

    def _persist(self, conn: sqlite3.Connection, revision: int, changes: list[Change]) -> None:
        """Runs on the store thread: one SQL transaction holding every row and the new revision."""
        encode = self._encoder.encode
        upserts = [(type(c.obj).__name__, c.obj.id, encode(c.obj)) for c in changes if c.action != "delete"]
        deletes = [(type(c.obj).__name__, c.obj.id) for c in changes if c.action == "delete"]
        # Key order turns random B-tree inserts into appends: 100k rows go in ~2.5x faster.
        upserts.sort()
        deletes.sort()
        conn.execute("BEGIN IMMEDIATE")
        try:
            if upserts:
                conn.executemany("INSERT OR REPLACE INTO objects(kind, id, data) VALUES (?, ?, ?)", upserts)
            if deletes:
                conn.executemany("DELETE FROM objects WHERE kind = ? AND id = ?", deletes)
            conn.execute("INSERT OR REPLACE INTO meta(key, value) VALUES ('revision', ?)", (revision,))
            conn.execute("COMMIT")
        except BaseException:
            conn.execute("ROLLBACK")
            raise

    def _committed(self, revision: int, changes: list[Change], fut: asyncio.Future[None]) -> None:
        try:
            if fut.cancelled() or fut.exception() is not None:
                return  # SQLite rolled back: memory stays as it was
            self._tables.apply(changes)
            self._revision = revision
            self._ring.append(revision, changes)
            fan_out(self._watches, revision, changes)
        finally:
            self._lock.release()

    async def wipe(self) -> None:
        """Delete every object in one transaction (watchers see the deletes)."""
        def delete_all(tx: WriteTx) -> None:
            for kind in STORED_KINDS:
                for obj in tx.list(kind):
                    tx.delete(kind, obj.id)

        await self.update(delete_all)

    # -------------------------------------------------------------------------------- watches
    def watch(self, from_revision: int | None = None,
              kinds: tuple[type[Meta], ...] | None = None) -> StoreWatch:
        """Changes committed after `from_revision` (None: from now on), optionally only of `kinds`.

        Raises Compacted here, at creation, when `from_revision` is older than the ring keeps.
        """
        self._require_open()
        after = self._revision if from_revision is None else from_revision
        replay = self._ring.since(after) if after < self._revision else []
        w = StoreWatch(kinds, after, self._forget)
        w.replay(replay)
        self._watches[w] = None
        return w

    def view_and_watch(self, fn: Callable[[ReadTx], R],
                       kinds: tuple[type[Meta], ...] | None = None) -> tuple[R, StoreWatch]:
        """`fn(view)` and a watch of every later change, with no await between them (atomic)."""
        result = fn(self.view())
        return result, self.watch(None, kinds)

    # -------------------------------------------------------------------------------- helpers
    def _forget(self, w: StoreWatch) -> None:
        self._watches.pop(w, None)

    def _require_open(self) -> tuple[sqlite3.Connection, ThreadPoolExecutor]:
        if self._conn is None or self._executor is None:
            raise Unavailable("the store is not open")
        return self._conn, self._executor


def _typecheck(store: SqliteStore) -> Any:
    """Lets mypy check that SqliteStore satisfies the Store protocol."""
    from shoal.store.protocol import Store

    checked: Store = store
    return checked

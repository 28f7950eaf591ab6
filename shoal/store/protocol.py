"""The Store protocol every backend (memory+sqlite now, etcd later) implements.

Rules (DESIGN.md §5.3):
- Objects are frozen msgspec structs from `shoal.api.types`; tables are keyed by class
  (`Service`, `Task`, `Node`, `Cluster`).
- `update(fn)` runs `fn(tx)` synchronously against a write transaction; if `fn` raises, nothing
  is written. On success the whole transaction is committed at one new global revision, and every
  object written in it gets `Version.Index = revision` and `UpdatedAt = now` (and `CreatedAt` on create).
- `tx.update(obj)` requires `obj.version.index` to equal the stored one, else raises
  `SequenceConflict` (Docker's "update out of sequence"); the transaction is then abandoned.
- Watches deliver, in commit order, one `Change` list per committed transaction after the
  revision asked for; `view_and_watch` reads a snapshot and subscribes atomically so no change is
  missed or seen twice. A revision older than the backend keeps raises `Compacted`.
- Reads (`view`) come from a memory cache and never block.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable, Iterable
from typing import Literal, Protocol, TypeVar

import msgspec

from shoal.api.types import Meta, Task

T = TypeVar("T", bound=Meta)
R = TypeVar("R")

Action = Literal["create", "update", "delete"]


class Change(msgspec.Struct, frozen=True):
    """One object created, updated or deleted (for delete, `obj` is its last stored value)."""

    action: Action
    obj: Meta
    revision: int


class Compacted(Exception):
    """The watch asked for a revision the store no longer keeps; re-read a snapshot."""


class ReadTx(Protocol):
    @property
    def revision(self) -> int:
        """The revision this view reflects."""
        ...

    def get(self, kind: type[T], id: str) -> T | None: ...

    def list(self, kind: type[T]) -> Iterable[T]: ...

    def find_by_name(self, kind: type[T], name: str) -> T | None:
        """Services by Spec.Name, Nodes by Description.Hostname (first match), others by Spec.Name."""
        ...

    def tasks_of_service(self, service_id: str) -> Iterable[Task]:
        """Tasks whose ServiceID is `service_id` (indexed)."""
        ...

    def tasks_of_node(self, node_id: str) -> Iterable[Task]:
        """Tasks whose NodeID is `node_id` (indexed)."""
        ...


class WriteTx(ReadTx, Protocol):
    def create(self, obj: T) -> T:
        """Insert; `obj.id` must be set and new (else Conflict). Returns the object as stored."""
        ...

    def update(self, obj: T) -> T:
        """Replace; `obj.version` must be the stored version (else SequenceConflict)."""
        ...

    def delete(self, kind: type[T], id: str) -> None:
        """Remove; NotFound if absent."""
        ...


class Watch(Protocol):
    def __aiter__(self) -> AsyncIterator[list[Change]]: ...

    def close(self) -> None: ...


class Store(Protocol):
    async def open(self) -> None: ...

    async def close(self) -> None: ...

    def view(self) -> ReadTx: ...

    async def update(self, fn: Callable[[WriteTx], R]) -> R: ...

    def watch(self, from_revision: int | None = None,
              kinds: tuple[type[Meta], ...] | None = None) -> Watch:
        """Changes after `from_revision` (None: from now on), optionally only of `kinds`."""
        ...

    def view_and_watch(self, fn: Callable[[ReadTx], R],
                       kinds: tuple[type[Meta], ...] | None = None) -> tuple[R, Watch]: ...

    async def wipe(self) -> None:
        """Delete every object (swarm leave --force)."""
        ...

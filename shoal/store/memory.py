"""The in-memory half of the store: committed tables with their indexes, read views, write transactions.

`SqliteStore` (shoal/store/sqlite.py) owns one `Tables` (the committed state), hands out `ReadView`s
over it, and runs each `update(fn)` against a `WriteTxn`, which buffers writes on top of the tables
so that reads inside the transaction see its own writes. Nothing here does I/O; nothing outside the
store package should import this module.

Indexes: services by lower-cased Spec.Name (unique, as swarmkit's memdb), nodes by lower-cased
Description.Hostname (not unique; first match wins), tasks by ServiceID and by NodeID.
"""

from __future__ import annotations

import builtins
from collections.abc import Iterable
from typing import Any, TypeVar, cast

import msgspec

from shoal.api.errors import Conflict, NotFound, SequenceConflict
from shoal.api.types import STORED_KINDS, Meta, Node, Service, Task, Version
from shoal.store.protocol import Action, Change

T = TypeVar("T", bound=Meta)

_replace = msgspec.structs.replace


def _kind_of(obj: Meta) -> type[Meta]:
    kind = type(obj)
    if kind not in STORED_KINDS:
        raise TypeError(f"the store does not hold {kind.__name__} objects")
    return kind


def _name_of(obj: Meta) -> str:
    """The name `find_by_name` matches: Spec.Name, a node's hostname, else a `name` attribute."""
    if isinstance(obj, Node):
        return obj.description.hostname
    spec = getattr(obj, "spec", None)
    name = getattr(spec, "name", None)
    if name is None:
        name = getattr(obj, "name", "")
    return str(name)


class Tables:
    """Committed objects per kind plus the secondary indexes. Mutated only by `apply`/`load`."""

    __slots__ = ("node_hosts", "objects", "service_names", "tasks_by_node", "tasks_by_service")

    def __init__(self) -> None:
        self.objects: dict[type[Meta], dict[str, Meta]] = {k: {} for k in STORED_KINDS}
        self.service_names: dict[str, str] = {}
        self.node_hosts: dict[str, dict[str, None]] = {}
        self.tasks_by_service: dict[str, dict[str, Task]] = {}
        self.tasks_by_node: dict[str, dict[str, Task]] = {}

    def load(self, objs: Iterable[Meta]) -> None:
        for obj in objs:
            self.objects[_kind_of(obj)][obj.id] = obj
            self._index(obj)

    def apply(self, changes: Iterable[Change]) -> None:
        """Make a committed transaction's changes visible to readers."""
        for ch in changes:
            obj = ch.obj
            table = self.objects[type(obj)]
            old = table.get(obj.id)
            if old is not None:
                self._unindex(old)
            if ch.action == "delete":
                del table[obj.id]
            else:
                table[obj.id] = obj
                self._index(obj)

    def _index(self, obj: Meta) -> None:
        if type(obj) is Task:
            self.tasks_by_service.setdefault(obj.service_id, {})[obj.id] = obj
            self.tasks_by_node.setdefault(obj.node_id, {})[obj.id] = obj
        elif type(obj) is Service:
            self.service_names[obj.spec.name.lower()] = obj.id
        elif type(obj) is Node:
            self.node_hosts.setdefault(obj.description.hostname.lower(), {})[obj.id] = None

    def _unindex(self, obj: Meta) -> None:
        if type(obj) is Task:
            _discard(self.tasks_by_service, obj.service_id, obj.id)
            _discard(self.tasks_by_node, obj.node_id, obj.id)
        elif type(obj) is Service:
            key = obj.spec.name.lower()
            if self.service_names.get(key) == obj.id:
                del self.service_names[key]
        elif type(obj) is Node:
            _discard(self.node_hosts, obj.description.hostname.lower(), obj.id)


def _discard(index: dict[str, dict[str, Any]], key: str, id: str) -> None:
    bucket = index.get(key)
    if bucket is not None:
        bucket.pop(id, None)
        if not bucket:
            del index[key]


class ReadView:
    """A read of the committed state at `revision`.

    It reads the live tables (no copy, so `view()` is cheap): it is a consistent snapshot only until
    the caller next awaits, because commits are applied between awaits. Never hold one across an
    await; take a fresh `store.view()` instead. Collections returned are fresh lists, safe to keep.
    """

    __slots__ = ("_revision", "_tables")

    def __init__(self, tables: Tables, revision: int) -> None:
        self._tables = tables
        self._revision = revision

    @property
    def revision(self) -> int:
        return self._revision

    def get(self, kind: type[T], id: str) -> T | None:
        return cast("T | None", self._tables.objects[kind].get(id))

    def list(self, kind: type[T]) -> builtins.list[T]:
        return cast("builtins.list[T]", list(self._tables.objects[kind].values()))

    def find_by_name(self, kind: type[T], name: str) -> T | None:
        """Services by Spec.Name and nodes by hostname, both case-insensitive (as swarmkit); others scan."""
        t = self._tables
        if kind is Service:
            sid = t.service_names.get(name.lower())
            return None if sid is None else cast("T", t.objects[Service][sid])
        if kind is Node:
            for nid in t.node_hosts.get(name.lower(), {}):
                return cast("T", t.objects[Node][nid])
            return None
        for obj in t.objects[kind].values():
            if _name_of(obj) == name:
                return cast("T", obj)
        return None

    def tasks_of_service(self, service_id: str) -> builtins.list[Task]:
        return list(self._tables.tasks_by_service.get(service_id, {}).values())

    def tasks_of_node(self, node_id: str) -> builtins.list[Task]:
        return list(self._tables.tasks_by_node.get(node_id, {}).values())


class WriteTxn(ReadView):
    """A write transaction: buffers creates/updates/deletes over the committed tables.

    Every object written is stamped with `Version.Index = revision` (the revision this transaction
    will commit at) and `UpdatedAt = now` (`CreatedAt` too on create). `changes()` gives the net
    effect per object, grouped by kind in STORED_KINDS order.
    """

    __slots__ = ("_by_node", "_by_service", "_now", "_version", "_writes")

    def __init__(self, tables: Tables, revision: int, now: Any) -> None:
        super().__init__(tables, revision)
        self._now = now
        # One Version shared by every object of the transaction: it is frozen, and this saves an
        # allocation per object on the 100k-task path.
        self._version = Version(index=revision)
        self._writes: dict[type[Meta], dict[str, Meta | None]] = {k: {} for k in STORED_KINDS}
        # Buffered tasks by ServiceID / NodeID, so index reads stay consistent with buffered writes.
        self._by_service: dict[str, dict[str, Task]] = {}
        self._by_node: dict[str, dict[str, Task]] = {}

    # ------------------------------------------------------------------------------------ reads
    def get(self, kind: type[T], id: str) -> T | None:
        buf = self._writes[kind]
        if id in buf:
            return cast("T | None", buf[id])
        return super().get(kind, id)

    def list(self, kind: type[T]) -> builtins.list[T]:
        buf = self._writes[kind]
        if not buf:
            return super().list(kind)
        out = [o for i, o in self._tables.objects[kind].items() if i not in buf]
        out.extend(o for o in buf.values() if o is not None)
        return cast("builtins.list[T]", out)

    def find_by_name(self, kind: type[T], name: str) -> T | None:
        buf = self._writes[kind]
        if not buf:
            return super().find_by_name(kind, name)
        fold = kind in (Service, Node)
        want = name.lower() if fold else name
        for obj in self.list(kind):
            have = _name_of(obj)
            if (have.lower() if fold else have) == want:
                return obj
        return None

    def tasks_of_service(self, service_id: str) -> builtins.list[Task]:
        return self._merged(self._tables.tasks_by_service, self._by_service, service_id)

    def tasks_of_node(self, node_id: str) -> builtins.list[Task]:
        return self._merged(self._tables.tasks_by_node, self._by_node, node_id)

    def _merged(self, committed: dict[str, dict[str, Task]], overlay: dict[str, dict[str, Task]],
                key: str) -> builtins.list[Task]:
        buf = self._writes[Task]
        out = [t for i, t in committed.get(key, {}).items() if i not in buf]
        out.extend(overlay.get(key, {}).values())
        return out

    # ----------------------------------------------------------------------------------- writes
    def create(self, obj: T) -> T:
        kind = _kind_of(obj)
        if not obj.id:
            raise ValueError(f"cannot create a {kind.__name__} without an ID")
        if self.get(kind, obj.id) is not None:
            raise Conflict(f"rpc error: code = AlreadyExists desc = {kind.__name__.lower()} {obj.id} "
                           "already exists")
        stamped = _replace(obj, version=self._version, created_at=self._now, updated_at=self._now)
        self._put(kind, stamped)
        return stamped

    def update(self, obj: T) -> T:
        kind = _kind_of(obj)
        current = self.get(kind, obj.id)
        if current is None:
            raise NotFound(f"{kind.__name__.lower()} {obj.id} not found")
        if obj.version.index != current.version.index:
            raise SequenceConflict()
        stamped = _replace(obj, version=self._version, created_at=current.created_at,
                           updated_at=self._now)
        self._put(kind, stamped)
        return stamped

    def delete(self, kind: type[T], id: str) -> None:
        if self.get(kind, id) is None:
            raise NotFound(f"{kind.__name__.lower()} {id} not found")
        self._unbuffer_task(kind, id)
        self._writes[kind][id] = None

    def _put(self, kind: type[Meta], obj: Meta) -> None:
        if kind is Service:
            self._check_service_name(cast(Service, obj))
        self._unbuffer_task(kind, obj.id)
        self._writes[kind][obj.id] = obj
        if kind is Task:
            task = cast(Task, obj)
            self._by_service.setdefault(task.service_id, {})[task.id] = task
            self._by_node.setdefault(task.node_id, {})[task.id] = task

    def _unbuffer_task(self, kind: type[Meta], id: str) -> None:
        if kind is Task:
            prev = self._writes[Task].get(id)
            if prev is not None:
                task = cast(Task, prev)
                _discard(self._by_service, task.service_id, id)
                _discard(self._by_node, task.node_id, id)

    def _check_service_name(self, svc: Service) -> None:
        # Service names are unique (swarmkit's store refuses a duplicate with ErrNameConflict).
        other = self.find_by_name(Service, svc.spec.name)
        if other is not None and other.id != svc.id:
            raise Conflict(f"rpc error: code = AlreadyExists desc = service {svc.spec.name} already exists")

    # ------------------------------------------------------------------------------------ result
    def changes(self) -> builtins.list[Change]:
        """The net effect of the transaction (a create then delete of one object leaves nothing)."""
        out: builtins.list[Change] = []
        rev = self._revision
        for kind, buf in self._writes.items():
            committed = self._tables.objects[kind]
            for id, new in buf.items():
                old = committed.get(id)
                action: Action
                if new is None:
                    if old is None:
                        continue
                    action, obj = "delete", old
                else:
                    action, obj = ("create" if old is None else "update"), new
                out.append(Change(action, obj, rev))
        return out

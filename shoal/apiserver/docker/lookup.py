"""Resolving `{id}` path parameters as moby does (daemon/cluster/helpers.go getService/getNode).

Order: exact ID, then exact name (nodes: also hostname), then unique ID prefix. Several prefix
matches give 400 "<noun> X is ambiguous (N matches found)"; none gives 404 "<noun> X not found".
Called by the services, tasks, nodes and logs handlers.
"""

from __future__ import annotations

from typing import TypeVar

from shoal.api.errors import InvalidArgument, NotFound
from shoal.api.types import Meta, Node, Service, Task
from shoal.store.protocol import ReadTx

T = TypeVar("T", bound=Meta)


def _by_name(tx: ReadTx, kind: type[T], ref: str) -> T | None:
    if kind is Task:
        # Tasks have no unique name index; swarmkit matches "<service>.<slot>.<id>" names.
        for task in tx.list(kind):
            if isinstance(task, Task) and task.name == ref:
                return task
        return None
    found = tx.find_by_name(kind, ref)
    if found is None and kind is Node:
        for node in tx.list(kind):
            if isinstance(node, Node) and node.spec.name == ref:
                return node
    return found


def resolve(tx: ReadTx, kind: type[T], ref: str, noun: str) -> T:
    exact = tx.get(kind, ref)
    if exact is not None:
        return exact
    named = _by_name(tx, kind, ref)
    if named is not None:
        return named
    matches = [obj for obj in tx.list(kind) if obj.id.startswith(ref)] if ref else []
    if len(matches) > 1:
        raise InvalidArgument(f"{noun} {ref} is ambiguous ({len(matches)} matches found)")
    if not matches:
        raise NotFound(f"{noun} {ref} not found")
    return matches[0]


def resolve_service(tx: ReadTx, ref: str) -> Service:
    return resolve(tx, Service, ref, "service")


def resolve_task(tx: ReadTx, ref: str) -> Task:
    return resolve(tx, Task, ref, "task")


def resolve_node(tx: ReadTx, ref: str, self_id: str | None) -> Node:
    if ref == "self" and self_id:
        ref = self_id
    return resolve(tx, Node, ref, "node")

"""`/nodes` list, inspect, update and delete; registered by app.py.

Workers join over the cluster port; the only manager is the one that ran `swarm init` until high
availability lands, so promotion is refused with a clear message and demoting or removing the
manager is refused as swarmkit refuses it. Removing a worker needs it down, or `force`; the
orchestrator then replaces its tasks on the remaining nodes.
The `label` filter matches engine labels and `node.label` the node's own labels (swarmkit).
"""

from __future__ import annotations

import msgspec
from aiohttp import web

from shoal.api.errors import FailedPrecondition, InvalidArgument, Unimplemented
from shoal.api.types import Node, NodeSpec, Version
from shoal.apiserver.docker.context import ctx, require_manager
from shoal.apiserver.docker.lookup import resolve_node
from shoal.apiserver.http import (
    add_route,
    empty_response,
    json_response,
    labels_match,
    parse_filters,
    query_bool,
    query_version,
    read_json,
)
from shoal.store.protocol import WriteTx

_FILTERS = {"id", "name", "label", "role", "membership", "node.label"}


def _is_manager(node: Node) -> bool:
    return node.spec.role == "manager" or node.manager_status is not None


def _matches(node: Node, filters: dict[str, list[str]]) -> bool:
    names = (node.spec.name, node.description.hostname)
    for key, values in filters.items():
        if key == "label":
            ok = labels_match(node.description.engine.labels, values)
        elif key == "node.label":
            ok = labels_match(node.spec.labels, values)
        elif key == "id":
            ok = any(node.id.startswith(v) for v in values)
        elif key == "name":
            ok = any(n.startswith(v) for v in values for n in names if n)
        elif key == "role":
            ok = ("manager" if _is_manager(node) else "worker") in values
        else:  # membership: every node that registered is accepted
            ok = "accepted" in values
        if values and not ok:
            return False
    return True


async def list_nodes(request: web.Request) -> web.Response:
    tx = require_manager(request)
    filters = parse_filters(request, _FILTERS)
    nodes = [n for n in tx.list(Node) if _matches(n, filters)]
    return json_response(sorted(nodes, key=lambda n: n.description.hostname))


async def inspect(request: web.Request) -> web.Response:
    tx = require_manager(request)
    return json_response(resolve_node(tx, request.match_info["id"], ctx(request).swarm.local_node_id()))


def _check_spec(node: Node, spec: NodeSpec, managers: int) -> None:
    if spec.availability not in ("", "active", "pause", "drain"):
        raise InvalidArgument(f"invalid availability {spec.availability!r}: must be active, pause or drain")
    if spec.role not in ("", "manager", "worker"):
        raise InvalidArgument(f"invalid role {spec.role!r}: must be manager or worker")
    was_manager = _is_manager(node)
    if spec.role == "manager" and not was_manager:
        raise Unimplemented("promoting nodes to manager is not supported until high availability "
                            "lands (Shoal runs a single manager)")
    if spec.role == "worker" and was_manager and managers <= 1:
        raise FailedPrecondition("rpc error: code = FailedPrecondition desc = attempting to demote "
                                 "the last manager of the swarm")
    if spec.role == "worker" and was_manager:
        raise Unimplemented("demoting a manager is not supported yet")


async def update(request: web.Request) -> web.Response:
    c = ctx(request)
    require_manager(request)
    ref = request.match_info["id"]
    version = query_version(request, "node")
    spec = await read_json(request, NodeSpec)

    def apply(tx: WriteTx) -> None:
        node = resolve_node(tx, ref, c.swarm.local_node_id())
        managers = sum(_is_manager(n) for n in tx.list(Node))
        _check_spec(node, spec, managers)
        fixed = msgspec.structs.replace(spec, role=spec.role or node.spec.role,
                                        availability=spec.availability or "active")
        tx.update(msgspec.structs.replace(node, spec=fixed, version=Version(index=version)))

    await c.store.update(apply)
    return empty_response()


async def delete(request: web.Request) -> web.Response:
    c = ctx(request)
    require_manager(request)
    ref = request.match_info["id"]
    force = query_bool(request, "force")

    def apply(tx: WriteTx) -> None:
        node = resolve_node(tx, ref, c.swarm.local_node_id())
        if _is_manager(node):
            raise FailedPrecondition(
                f"rpc error: code = FailedPrecondition desc = node {node.id} is a cluster manager and is a "
                "member of the raft cluster. It must be demoted to worker before removal")
        if node.status.state not in ("down", "unknown", "disconnected") and not force:
            raise FailedPrecondition(
                f"rpc error: code = FailedPrecondition desc = node {node.id} is not down and can't be "
                "removed")
        tx.delete(Node, node.id)

    await c.store.update(apply)
    return empty_response()


def register(app: web.Application) -> None:
    add_route(app, "GET", "/nodes", list_nodes)
    add_route(app, "GET", "/nodes/{id}", inspect)
    add_route(app, "POST", "/nodes/{id}/update", update)
    add_route(app, "DELETE", "/nodes/{id}", delete)

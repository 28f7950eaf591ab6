"""`swarm init`'s store half: create the Cluster object, this host's manager Node and `ingress`.

Called by the daemon when it handles `POST /swarm/init`, before it starts the Manager. Both objects
are created in one transaction, so a crash never leaves a cluster without its first manager.
Calling it again once the cluster exists returns the existing cluster unchanged (adding this host's
node only if it is somehow missing). The cluster gets the default address pool (10.0.0.0/8 in /24s;
the API's init handler replaces both when the request sets them) and the `ingress` overlay gets the
first /24 of it that no route of this host overlaps.
"""

from __future__ import annotations

import datetime as dt
import ipaddress
import logging
import secrets
from typing import Any, TypeVar

import msgspec

from shoal.api.defaults import initial_swarm_spec
from shoal.api.ids import new_id
from shoal.api.ipam import DEFAULT_POOL, DEFAULT_SUBNET_SIZE, PoolExhausted, find_ingress, new_ingress
from shoal.api.types import (
    Cluster,
    JoinTokens,
    ManagerStatus,
    Network,
    Node,
    NodeDescription,
    NodeSpec,
    NodeStatus,
    SwarmSpec,
)
from shoal.hostnet.cmd import HostnetError
from shoal.hostnet.routes import routed_networks
from shoal.store.protocol import Store, WriteTx

log = logging.getLogger(__name__)

_BASE36 = "0123456789abcdefghijklmnopqrstuvwxyz"
CLUSTER_PORT = 2377
S = TypeVar("S", bound=msgspec.Struct)


def join_token() -> str:
    """A token shaped like Swarm's: "SWMTKN-1-" + 50 + "-" + 25 base36 characters.

    Placeholder randomness only: in Swarm the first part encodes the root CA's digest so a joining
    node can pin the CA. The CA-bound tokens come with the CA in a later issue.
    """
    def part(n: int) -> str:
        return "".join(secrets.choice(_BASE36) for _ in range(n))

    return f"SWMTKN-1-{part(50)}-{part(25)}"


def merge_spec(base: S, override: S) -> S:
    """`override` where it sets a field (not the zero value), `base` elsewhere; nested structs merge."""
    changes: dict[str, Any] = {}
    for name, default in zip(override.__struct_fields__, _defaults(type(override)), strict=True):
        value, current = getattr(override, name), getattr(base, name)
        if value == default:
            continue
        if isinstance(value, msgspec.Struct) and isinstance(current, type(value)):
            value = merge_spec(current, value)
        changes[name] = value
    return msgspec.structs.replace(base, **changes)


def _defaults(cls: type[msgspec.Struct]) -> list[Any]:
    out: list[Any] = []
    for info in msgspec.structs.fields(cls):
        if info.default is not msgspec.NODEFAULT:
            out.append(info.default)
        elif info.default_factory is not msgspec.NODEFAULT:
            out.append(info.default_factory())
        else:
            out.append(msgspec.NODEFAULT)
    return out


def _manager_node(node_id: str, description: NodeDescription, addr: str, now: dt.datetime) -> Node:
    return Node(
        id=node_id, created_at=now, updated_at=now,
        spec=NodeSpec(role="manager", availability="active"),
        description=description,
        status=NodeStatus(state="ready", addr=addr),
        manager_status=ManagerStatus(leader=True, reachability="reachable", addr=f"{addr}:{CLUSTER_PORT}"),
    )


def _host_routes() -> list[ipaddress.IPv4Network]:
    try:
        return routed_networks()
    except (HostnetError, ValueError) as e:
        log.warning("cannot read this host's routes (%s): ingress is carved without checking them", e)
        return []


def _create_ingress(tx: WriteTx, routes: list[ipaddress.IPv4Network]) -> None:
    if find_ingress(tx.list(Network)) is not None:
        return
    try:
        tx.create(new_ingress([DEFAULT_POOL], DEFAULT_SUBNET_SIZE, routes))
    except PoolExhausted:
        log.error("no /24 of %s is free of this host's routes: no ingress network", DEFAULT_POOL)


async def bootstrap_cluster(store: Store, *, node_id: str, description: NodeDescription, addr: str,
                            spec: SwarmSpec, now: dt.datetime) -> Cluster:
    """Create the Cluster (spec = Shoal's initial spec overridden by `spec`), this manager's Node
    and the `ingress` network."""
    routes = _host_routes()

    def create(tx: WriteTx) -> Cluster:
        if tx.get(Node, node_id) is None:
            tx.create(_manager_node(node_id, description, addr, now))
        for existing in tx.list(Cluster):
            return existing
        cluster = Cluster(
            id=new_id(), created_at=now, updated_at=now,
            spec=merge_spec(initial_swarm_spec(), spec),
            default_addr_pool=[DEFAULT_POOL], subnet_size=DEFAULT_SUBNET_SIZE,
            join_tokens=JoinTokens(worker=join_token(), manager=join_token()),
        )
        _create_ingress(tx, routes)
        return tx.create(cluster)

    return await store.update(create)

"""`/swarm`, `/swarm/init`, `/swarm/leave`, `/swarm/update`, `/swarm/join`; registered by app.py.

Joining and leaving go through the daemon's SwarmControl (api/services.py): it starts or stops
the manager and the agent, binds the cluster port (never a wildcard address: see
daemon/cluster.py) and holds a worker's membership, which its store does not. Token rotation
goes through it too, since new tokens are bound to the root CA the daemon holds.
"""

from __future__ import annotations

from typing import Any

import msgspec
from aiohttp import web

from shoal.api.errors import ALREADY_IN_SWARM, InvalidArgument, Unavailable
from shoal.api.ipam import (
    DEFAULT_SUBNET_SIZE,
    PoolExhausted,
    find_ingress,
    new_ingress,
    subnet_of,
    validate_pools,
)
from shoal.api.types import Network, SwarmSpec
from shoal.apiserver.docker.context import cluster_of, ctx, local_role, require_manager
from shoal.apiserver.docker.networks import host_routes
from shoal.apiserver.http import (
    add_route,
    empty_response,
    json_response,
    query_bool,
    query_version,
    read_json,
)
from shoal.store.protocol import WriteTx


class InitRequest(msgspec.Struct, rename="pascal", kw_only=True):
    listen_addr: str = ""
    advertise_addr: str = ""
    data_path_addr: str = ""
    data_path_port: int = 0
    force_new_cluster: bool = False
    spec: dict[str, Any] | None = None
    auto_lock_managers: bool = False
    availability: str = ""
    default_addr_pool: list[str] | None = None
    subnet_size: int = 0


class JoinRequest(msgspec.Struct, rename="pascal", kw_only=True):
    listen_addr: str = ""
    advertise_addr: str = ""
    data_path_addr: str = ""
    remote_addrs: list[str] | None = None
    join_token: str = ""
    availability: str = ""


async def inspect(request: web.Request) -> web.Response:
    tx = require_manager(request)
    return json_response(cluster_of(tx))


async def init(request: web.Request) -> web.Response:
    c = ctx(request)
    body = await read_json(request, InitRequest)
    if local_role(c) is not None:
        raise Unavailable(ALREADY_IN_SWARM)
    pools, size = None, 0
    if body.default_addr_pool or body.subnet_size not in (0, DEFAULT_SUBNET_SIZE):
        pools, size = validate_pools(body.default_addr_pool or [], body.subnet_size, host_routes())
    node_id = await c.swarm.init(body.advertise_addr, body.listen_addr, body.spec or {})
    if pools is not None:
        await c.store.update(lambda tx: _set_pools(tx, pools, size))
    return json_response(node_id)


def _set_pools(tx: WriteTx, pools: list[str], size: int) -> None:
    """Store the pools given at init and carve `ingress` (made by bootstrap from the default
    pool, before anything is attached to it) out of them instead."""
    cluster = cluster_of(tx)
    if cluster is None:
        return
    tx.update(msgspec.structs.replace(cluster, default_addr_pool=pools, subnet_size=size))
    ingress = find_ingress(tx.list(Network))
    others = [s for s in (subnet_of(n) for n in tx.list(Network) if n is not ingress) if s is not None]
    try:
        fresh = new_ingress(pools, size, [*others, *host_routes()], network_id=ingress.id if ingress else "")
    except PoolExhausted as e:
        raise InvalidArgument(str(e)) from None
    if ingress is None:
        tx.create(fresh)
    else:
        tx.update(msgspec.structs.replace(ingress, ipam_options=fresh.ipam_options))


async def leave(request: web.Request) -> web.Response:
    c = ctx(request)
    if local_role(c) is None:
        raise Unavailable("This node is not part of a swarm")
    await c.swarm.leave(query_bool(request, "force"))
    return empty_response()


async def join(request: web.Request) -> web.Response:
    c = ctx(request)
    body = await read_json(request, JoinRequest)
    if local_role(c) is not None:
        raise Unavailable(ALREADY_IN_SWARM)
    remotes = [a.strip() for a in body.remote_addrs or [] if a.strip()]
    if not remotes:
        raise InvalidArgument("at least 1 RemoteAddr is required to join")
    if not body.join_token.strip():
        raise InvalidArgument("a join token is required to join a swarm (docker swarm join --token TOKEN)")
    if body.availability not in ("", "active"):
        raise InvalidArgument(f"joining with availability {body.availability!r} is not supported: "
                              "join, then use docker node update --availability")
    await c.swarm.join(remotes, body.join_token.strip(), body.advertise_addr, body.listen_addr)
    return empty_response()


async def update(request: web.Request) -> web.Response:
    c = ctx(request)
    require_manager(request)
    version = query_version(request, "swarm")
    spec = await read_json(request, SwarmSpec)
    if spec.dispatcher.heartbeat_period < 0 or spec.ca_config.node_cert_expiry < 0:
        raise InvalidArgument("invalid swarm spec: durations must not be negative")

    def apply(tx: WriteTx) -> None:
        cluster = cluster_of(tx)
        if cluster is None:
            raise Unavailable("This node is not part of a swarm")
        new = msgspec.structs.replace(cluster, spec=spec,
                                      version=msgspec.structs.replace(cluster.version, index=version))
        tx.update(new)

    await c.store.update(apply)
    rotate_worker = query_bool(request, "rotateWorkerToken")
    rotate_manager = query_bool(request, "rotateManagerToken")
    if rotate_worker or rotate_manager:
        await c.swarm.rotate_join_tokens(worker=rotate_worker, manager=rotate_manager)
    return empty_response()


def register(app: web.Application) -> None:
    add_route(app, "GET", "/swarm", inspect)
    add_route(app, "POST", "/swarm/init", init)
    add_route(app, "POST", "/swarm/leave", leave)
    add_route(app, "POST", "/swarm/join", join)
    add_route(app, "POST", "/swarm/update", update)


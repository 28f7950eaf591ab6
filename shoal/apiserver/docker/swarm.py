"""`/swarm`, `/swarm/init`, `/swarm/leave`, `/swarm/update`, `/swarm/join`; registered by app.py.

Joining and leaving go through the daemon's SwarmControl (api/services.py): it starts or stops
the manager and the agent. `ListenAddr` from the CLI (0.0.0.0:2377 by default) is recorded,
never bound here: the cluster port belongs to the multi-host issue.
"""

from __future__ import annotations

import secrets
from typing import Any

import msgspec
from aiohttp import web

from shoal.api.errors import ALREADY_IN_SWARM, Unavailable, Unimplemented
from shoal.api.types import JoinTokens, SwarmSpec
from shoal.apiserver.docker.context import cluster_of, ctx, require_manager
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


async def inspect(request: web.Request) -> web.Response:
    tx = require_manager(request)
    return json_response(cluster_of(tx))


async def init(request: web.Request) -> web.Response:
    c = ctx(request)
    body = await read_json(request, InitRequest)
    if cluster_of(c.store.view()) is not None:
        raise Unavailable(ALREADY_IN_SWARM)
    node_id = await c.swarm.init(body.advertise_addr, body.listen_addr or "0.0.0.0:2377", body.spec or {})
    return json_response(node_id)


async def leave(request: web.Request) -> web.Response:
    c = ctx(request)
    if cluster_of(c.store.view()) is None:
        raise Unavailable("This node is not part of a swarm")
    await c.swarm.leave(query_bool(request, "force"))
    return empty_response()


async def join(request: web.Request) -> web.Response:
    raise Unimplemented("joining a swarm is not supported yet: Shoal runs single-node swarms for now "
                        "(multi-host support is a later issue)")


def _rotated(token: str) -> str:
    """A new secret part, keeping the `SWMTKN-1-<ca digest>-` prefix."""
    prefix, _, _ = token.rpartition("-")
    return f"{prefix or 'SWMTKN-1'}-{secrets.token_hex(13)[:25]}"


async def update(request: web.Request) -> web.Response:
    c = ctx(request)
    require_manager(request)
    version = query_version(request, "swarm")
    spec = await read_json(request, SwarmSpec)
    rotate_worker = query_bool(request, "rotateWorkerToken")
    rotate_manager = query_bool(request, "rotateManagerToken")

    def apply(tx: WriteTx) -> None:
        cluster = cluster_of(tx)
        if cluster is None:
            raise Unavailable("This node is not part of a swarm")
        tokens = cluster.join_tokens
        tokens = JoinTokens(worker=_rotated(tokens.worker) if rotate_worker else tokens.worker,
                            manager=_rotated(tokens.manager) if rotate_manager else tokens.manager)
        new = msgspec.structs.replace(cluster, spec=spec, join_tokens=tokens,
                                      version=msgspec.structs.replace(cluster.version, index=version))
        tx.update(new)

    await c.store.update(apply)
    return empty_response()


def register(app: web.Application) -> None:
    add_route(app, "GET", "/swarm", inspect)
    add_route(app, "POST", "/swarm/init", init)
    add_route(app, "POST", "/swarm/leave", leave)
    add_route(app, "POST", "/swarm/join", join)
    add_route(app, "POST", "/swarm/update", update)


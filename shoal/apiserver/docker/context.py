"""What the Docker API handlers are given: the store and the narrow services of api/services.py.

The daemon builds one `ApiContext` and passes it to `make_app`; handlers reach it through
`ctx(request)`. `EngineInfo` is the static part of `/info` and `/version` (host facts, flags).
"""

from __future__ import annotations

import dataclasses

from aiohttp import web

from shoal.api.clock import Clock
from shoal.api.errors import NOT_IN_SWARM, Unavailable
from shoal.api.services import ImageService, LogSource, SwarmControl
from shoal.api.types import Cluster
from shoal.store.protocol import ReadTx, Store


@dataclasses.dataclass(frozen=True, kw_only=True)
class EngineInfo:
    hostname: str
    data_root: str
    kernel_version: str
    operating_system: str
    architecture: str  # Docker's name: x86_64, aarch64
    ncpu: int
    mem_total: int
    labels: dict[str, str]
    runtime: str
    listen_addr: str


@dataclasses.dataclass(frozen=True, kw_only=True)
class ApiContext:
    store: Store
    images: ImageService
    logs: LogSource
    swarm: SwarmControl
    clock: Clock
    engine: EngineInfo


CONTEXT_KEY = web.AppKey("shoal_api_context", ApiContext)


def ctx(request: web.Request) -> ApiContext:
    return request.app[CONTEXT_KEY]


def cluster_of(tx: ReadTx) -> Cluster | None:
    """The swarm this node is in, if any (a store holding a Cluster means we are in one)."""
    for cluster in tx.list(Cluster):
        return cluster
    return None


def require_manager(request: web.Request) -> ReadTx:
    """A read view, or 503 with Docker's canonical text when this node is not in a swarm."""
    tx = ctx(request).store.view()
    if cluster_of(tx) is None:
        raise Unavailable(NOT_IN_SWARM)
    return tx

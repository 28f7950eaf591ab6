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


WORKER_NOT_MANAGER = (
    "This node is not a swarm manager. Worker nodes can't be used to view or modify cluster state. "
    "Please run this command on a manager node or promote the current node to a manager."
)

CONTEXT_KEY = web.AppKey("shoal_api_context", ApiContext)


def ctx(request: web.Request) -> ApiContext:
    return request.app[CONTEXT_KEY]


def cluster_of(tx: ReadTx) -> Cluster | None:
    """The swarm this node is in, if any (a store holding a Cluster means we are in one)."""
    for cluster in tx.list(Cluster):
        return cluster
    return None


def local_role(c: ApiContext) -> str | None:
    """"manager", "worker", or None outside a swarm (a worker's store holds no Cluster)."""
    node = c.swarm.local_node()
    if node is not None:
        return node.role
    return "manager" if cluster_of(c.store.view()) is not None else None


def require_manager(request: web.Request) -> ReadTx:
    """A read view, or 503 with Docker's canonical text when this node is not a manager: the
    worker message on a worker, the not-in-a-swarm message elsewhere."""
    c = ctx(request)
    tx = c.store.view()
    if cluster_of(tx) is None:
        node = c.swarm.local_node()
        raise Unavailable(WORKER_NOT_MANAGER if node is not None and node.role == "worker"
                          else NOT_IN_SWARM)
    return tx

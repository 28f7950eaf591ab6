"""Forming the lab's swarm over HTTP: `swarm init` on node1, `swarm join` on the others, and
waiting until the manager sees every host Ready."""

from __future__ import annotations

import time
from typing import Any

from shoal.lab import names
from shoal.lab.client import HostClient
from shoal.lab.state import HostState, LabState

READY_TIMEOUT_S = 60.0


def client(state: LabState, host: HostState) -> HostClient:
    return HostClient(host.name, names.socket_path(state.name, host.name))


def init_spec(dispatcher_heartbeat_ns: int) -> dict[str, Any]:
    return {"Dispatcher": {"HeartbeatPeriod": dispatcher_heartbeat_ns}} if dispatcher_heartbeat_ns else {}


def init(state: LabState, dispatcher_heartbeat_ns: int = 0) -> None:
    """`swarm init` on the first host, advertising its lab address."""
    manager = state.hosts[0]
    body = {"ListenAddr": f"{manager.address}:{names.CLUSTER_PORT}", "AdvertiseAddr": manager.address,
            "Spec": init_spec(dispatcher_heartbeat_ns)}
    with client(state, manager) as c:
        c.call("POST", "/swarm/init", body)


def swarm_state(state: LabState, host: HostState) -> str:
    """The host's Swarm.LocalNodeState from /info ("inactive", "active", ...)."""
    with client(state, host) as c:
        info = c.call("GET", "/info") or {}
    return str(info.get("Swarm", {}).get("LocalNodeState", ""))


def join(state: LabState, host: HostState) -> None:
    """`swarm join` of `host` as a worker of the lab's first host."""
    manager = state.hosts[0]
    with client(state, manager) as c:
        token = (c.call("GET", "/swarm") or {}).get("JoinTokens", {}).get("Worker", "")
    body = {"RemoteAddrs": [f"{manager.address}:{names.CLUSTER_PORT}"], "JoinToken": token,
            "AdvertiseAddr": host.address, "ListenAddr": f"{host.address}:{names.CLUSTER_PORT}"}
    with client(state, host) as c:
        c.call("POST", "/swarm/join", body)


def join_workers(state: LabState) -> None:
    """Join every host but the first that is not in a swarm yet."""
    for host in state.hosts[1:]:
        if swarm_state(state, host) != "active":
            join(state, host)


def ready_count(state: LabState) -> int:
    """How many nodes the manager reports Ready."""
    with client(state, state.hosts[0]) as c:
        nodes = c.call("GET", "/nodes") or []
    return sum(1 for n in nodes if n.get("Status", {}).get("State") == "ready")


def wait_ready(state: LabState, timeout: float = READY_TIMEOUT_S) -> None:
    deadline = time.monotonic() + timeout
    want = len(state.hosts)
    while (have := ready_count(state)) < want:
        if time.monotonic() > deadline:
            raise names.LabError(f"only {have} of {want} nodes Ready after {timeout:.0f}s "
                                 f"(GET /nodes on {state.hosts[0].name})")
        time.sleep(0.1)

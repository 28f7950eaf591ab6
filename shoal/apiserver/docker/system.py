"""`/_ping`, `/version` and `/info` (wire-protocols §1.1 and §1.3); registered by app.py.

`/_ping` answers before `swarm init` and reports the swarm state in its `Swarm:` header, which the
docker CLI uses to hide manager-only commands. `/info` carries the `Swarm` block the CLI reads for
`node ls` (self marker), `stack deploy` (ControlAvailable) and `swarm join-token`.
"""

from __future__ import annotations

import platform
import sys
from typing import Any

import msgspec
from aiohttp import web

from shoal.api.services import LocalNode
from shoal.api.states import TaskState
from shoal.api.types import Cluster, Node, Task
from shoal.apiserver.docker.context import ApiContext, cluster_of, ctx, local_role
from shoal.apiserver.http import API_VERSION, ENGINE_VERSION, MIN_API_VERSION, add_route, json_response

_PING_HEADERS = {"Cache-Control": "no-cache, no-store, must-revalidate", "Pragma": "no-cache",
                 "Content-Type": "text/plain; charset=utf-8"}


async def ping(request: web.Request) -> web.Response:
    role = local_role(ctx(request))
    headers = dict(_PING_HEADERS, Swarm=f"active/{role}" if role else "inactive")
    body = b"" if request.method == "HEAD" else b"OK"
    return web.Response(body=body, headers=headers)


async def version(request: web.Request) -> web.Response:
    e = ctx(request).engine
    details = {"ApiVersion": API_VERSION, "MinAPIVersion": MIN_API_VERSION, "GitCommit": "shoal",
               "GoVersion": f"python{sys.version_info.major}.{sys.version_info.minor}", "Os": "linux",
               "Arch": _go_arch(e.architecture), "KernelVersion": e.kernel_version, "BuildTime": "",
               "Experimental": "false"}
    return json_response({
        "Platform": {"Name": "Shoal"},
        "Components": [{"Name": "Engine", "Version": ENGINE_VERSION, "Details": details}],
        "Version": ENGINE_VERSION, "ApiVersion": API_VERSION, "MinAPIVersion": MIN_API_VERSION,
        "GitCommit": "shoal", "GoVersion": details["GoVersion"], "Os": "linux",
        "Arch": details["Arch"], "KernelVersion": e.kernel_version, "BuildTime": "",
    })


def _go_arch(machine: str) -> str:
    return {"x86_64": "amd64", "aarch64": "arm64"}.get(machine, machine)


def _cluster_info(cluster: Cluster) -> dict[str, Any]:
    """Info.Swarm.Cluster is ClusterInfo: the Swarm object without its join tokens."""
    data: dict[str, Any] = msgspec.to_builtins(cluster)
    data.pop("JoinTokens", None)
    return data


def _worker_info(node: LocalNode) -> dict[str, Any]:
    """A worker knows only itself and its managers' addresses; Cluster is absent (moby's too)."""
    return {"NodeID": node.node_id, "NodeAddr": node.addr, "LocalNodeState": "active",
            "ControlAvailable": False, "Error": "",
            "RemoteManagers": [{"NodeID": "", "Addr": addr} for addr in node.managers]}


def _swarm_info(c: ApiContext) -> dict[str, Any]:
    tx = c.store.view()
    cluster = cluster_of(tx)
    local = c.swarm.local_node()
    if local is not None and local.role == "worker":
        return _worker_info(local)
    node_id = c.swarm.local_node_id() or ""
    if cluster is None:
        return {"NodeID": "", "NodeAddr": "", "LocalNodeState": "inactive", "ControlAvailable": False,
                "Error": "", "RemoteManagers": None}
    nodes = list(tx.list(Node))
    managers = [n for n in nodes if n.manager_status is not None or n.spec.role == "manager"]
    me = tx.get(Node, node_id)
    addr = me.status.addr if me is not None else ""
    return {
        "NodeID": node_id, "NodeAddr": addr, "LocalNodeState": "active", "ControlAvailable": True,
        "Error": "", "Nodes": len(nodes), "Managers": len(managers),
        "RemoteManagers": [{"NodeID": m.id, "Addr": m.manager_status.addr if m.manager_status else ""}
                           for m in managers],
        "Cluster": _cluster_info(cluster),
    }


def _container_counts(c: ApiContext) -> dict[str, int]:
    tx = c.store.view()
    node_id = c.swarm.local_node_id()
    tasks: list[Task] = list(tx.tasks_of_node(node_id)) if node_id else []
    running = sum(t.status.state == TaskState.RUNNING for t in tasks)
    with_container = [t for t in tasks if t.status.container_status is not None]
    return {"Containers": len(with_container), "ContainersRunning": running, "ContainersPaused": 0,
            "ContainersStopped": max(0, len(with_container) - running)}


async def info(request: web.Request) -> web.Response:
    c = ctx(request)
    e = c.engine
    body: dict[str, Any] = {
        "ID": c.swarm.local_node_id() or "", "Name": e.hostname, "ServerVersion": ENGINE_VERSION,
        **_container_counts(c), "Images": len(c.images.list()),
        "Driver": "overlay2", "DriverStatus": [], "CgroupDriver": "cgroupfs", "CgroupVersion": "1",
        "DockerRootDir": e.data_root, "OperatingSystem": e.operating_system, "OSType": "linux",
        "OSVersion": "", "Architecture": e.architecture, "KernelVersion": e.kernel_version,
        "NCPU": e.ncpu, "MemTotal": e.mem_total, "IndexServerAddress": "https://index.docker.io/v1/",
        "Labels": [f"{k}={v}" for k, v in sorted(e.labels.items())],
        "Runtimes": {e.runtime: {"path": e.runtime}}, "DefaultRuntime": e.runtime,
        "LiveRestoreEnabled": True, "Isolation": "", "InitBinary": "", "SecurityOptions": [],
        "Plugins": {"Volume": [], "Network": ["bridge"], "Log": ["json-file"]},
        "MemoryLimit": True, "SwapLimit": False, "CpuCfsPeriod": True, "CpuCfsQuota": True,
        "Debug": False, "ExperimentalBuild": False, "HttpProxy": "", "HttpsProxy": "", "NoProxy": "",
        "Warnings": None, "Swarm": _swarm_info(c),
    }
    return json_response(body)


def register(app: web.Application) -> None:
    for method in ("GET", "HEAD"):
        add_route(app, method, "/_ping", ping)
    add_route(app, "GET", "/version", version)
    add_route(app, "GET", "/info", info)


def host_architecture() -> str:
    return platform.machine()

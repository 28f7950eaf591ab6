"""The Docker API of a real shoald, over its unix socket with httpx (no docker client involved).

Covers negotiation and headers, the not-in-a-swarm answers, swarm init, a replicated busybox
httpd service end to end (containers answering HTTP on the bridge), scaling, the 4xx/5xx table
(each leaving the services unchanged), image errors on tasks, removal leaving nothing on the host,
restart of a killed container, and adoption of running containers after kill -9 of shoald.
"""

from __future__ import annotations

import os
import signal
import subprocess
from collections.abc import Callable
from typing import Any

import pytest

from tests.daemon import Daemon, cgroups_of, mounts_under, netns_of, wait_for

pytestmark = [pytest.mark.integration, pytest.mark.xdist_group("integration-api")]

V = "/v1.50"


def spec(name: str, replicas: int = 1, image: str = "busybox:latest", args: list[str] | None = None,
         **extra: Any) -> dict[str, Any]:
    return {"Name": name, "Labels": {"app": name},
            "TaskTemplate": {"ContainerSpec": {"Image": image,
                                               "Args": args or ["httpd", "-f", "-p", "80"]},
                             "RestartPolicy": {"Condition": "any", "Delay": 100_000_000}},
            "Mode": {"Replicated": {"Replicas": replicas}}, **extra}


def tasks_of(d: Daemon, service: str) -> list[dict[str, Any]]:
    resp = d.api("GET", f'{V}/tasks?filters={{"service":{{"{service}":true}}}}')
    assert resp.status_code == 200, resp.text
    tasks: list[dict[str, Any]] = resp.json()
    return tasks


def running(d: Daemon, service: str) -> list[dict[str, Any]]:
    return [t for t in tasks_of(d, service)
            if t["Status"]["State"] == "running" and t["DesiredState"] == "running"]


def wait_running(d: Daemon, service: str, n: int, timeout: float = 90) -> list[dict[str, Any]]:
    def ok() -> list[dict[str, Any]] | None:
        r = running(d, service)
        return r if len(r) == n else None

    result: list[dict[str, Any]] = wait_for(ok, timeout, f"{n} running tasks of {service}")
    return result


def eth0_address(pid: int) -> str:
    out = subprocess.run(["nsenter", "-t", str(pid), "-n", "ip", "-4", "-o", "addr", "show", "eth0"],
                         capture_output=True, text=True, check=True).stdout
    return out.split("inet ")[1].split("/")[0]


def http_get(addr: str) -> int:
    proc = subprocess.run(["curl", "-s", "-o", "/dev/null", "-w", "%{http_code}", "--max-time", "3",
                           f"http://{addr}/"], capture_output=True, text=True)
    return int(proc.stdout or 0)


def _answers(addr: str) -> Callable[[], bool]:
    return lambda: http_get(addr) in (200, 404)


# ------------------------------------------------------------------------------ before init
def test_ping_version_info_and_not_in_swarm(daemon: Daemon) -> None:
    for method in ("HEAD", "GET"):
        resp = daemon.api(method, "/_ping")
        assert resp.status_code == 200
        assert resp.headers["Api-Version"] == "1.50"
        assert resp.headers["Ostype"] == "linux"
        assert resp.headers["Swarm"] == "inactive"
        assert resp.headers["Server"].startswith("Docker/")
    assert daemon.api("GET", "/_ping").text == "OK"
    version = daemon.api("GET", "/version").json()
    assert version["ApiVersion"] == "1.50" and version["MinAPIVersion"] == "1.24"
    assert version["Components"][0]["Name"] == "Engine"
    too_new = daemon.api("GET", "/v1.99/version")
    assert too_new.status_code == 400 and "too new" in too_new.json()["message"]
    info = daemon.api("GET", f"{V}/info").json()
    assert info["Swarm"]["LocalNodeState"] == "inactive"
    assert info["DockerRootDir"] == str(daemon.data_root.resolve()) or info["DockerRootDir"]
    resp = daemon.api("GET", f"{V}/services")
    assert resp.status_code == 503
    assert resp.headers["Content-Type"] == "application/json"
    assert resp.json()["message"].startswith('This node is not a swarm manager. Use "docker swarm init"')
    leave = daemon.api("POST", f"{V}/swarm/leave")
    assert leave.status_code == 503 and leave.json()["message"] == "This node is not part of a swarm"


# ------------------------------------------------------------------------------ in a swarm
def test_swarm_init_and_inspect(swarm: Daemon) -> None:
    assert swarm.api("HEAD", "/_ping").headers["Swarm"] == "active/manager"
    info = swarm.api("GET", f"{V}/info").json()["Swarm"]
    assert info["LocalNodeState"] == "active" and info["ControlAvailable"] is True
    node = swarm.api("GET", f"{V}/nodes/{info['NodeID']}").json()
    assert node["ManagerStatus"]["Leader"] is True
    cluster = swarm.api("GET", f"{V}/swarm").json()
    assert cluster["JoinTokens"]["Worker"].startswith("SWMTKN-1-")
    again = swarm.api("POST", f"{V}/swarm/init", json={"ListenAddr": "0.0.0.0:2377"})
    assert again.status_code == 503 and "already part of a swarm" in again.json()["message"]
    assert swarm.api("POST", f"{V}/swarm/leave").status_code == 503  # last manager, no force


def test_replicated_httpd_answers_and_scales(swarm: Daemon) -> None:
    resp = swarm.api("POST", f"{V}/services/create", json=spec("web", 3))
    assert resp.status_code == 201, resp.text
    assert resp.json()["Warnings"] is None
    tasks = wait_running(swarm, "web", 3)
    for t in tasks:
        addr = eth0_address(t["Status"]["ContainerStatus"]["PID"])
        wait_for(_answers(addr), 30, f"httpd answering on {addr}")
    listed = swarm.api("GET", f"{V}/services?status=true").json()
    web = next(s for s in listed if s["Spec"]["Name"] == "web")
    assert web["ServiceStatus"] == {"RunningTasks": 3, "DesiredTasks": 3, "CompletedTasks": 0} or \
        web["ServiceStatus"]["RunningTasks"] == 3
    svc = swarm.api("GET", f"{V}/services/web").json()
    new = dict(svc["Spec"], Mode={"Replicated": {"Replicas": 1}})
    resp = swarm.api("POST", f"{V}/services/{svc['ID']}/update?version={svc['Version']['Index']}", json=new)
    assert resp.status_code == 200 and resp.json() == {"Warnings": None}
    wait_running(swarm, "web", 1)
    after = swarm.api("GET", f"{V}/services/web").json()
    assert after["PreviousSpec"]["Mode"]["Replicated"]["Replicas"] == 3


BAD_INPUTS = [
    ("negative replicas", spec("bad1", -1), 400),
    ("bad restart condition", spec("bad2") | {"TaskTemplate": {
        "ContainerSpec": {"Image": "busybox"}, "RestartPolicy": {"Condition": "sometimes"}}}, 400),
    ("bad constraint", spec("bad3") | {"TaskTemplate": {
        "ContainerSpec": {"Image": "busybox"}, "Placement": {"Constraints": ["node.role=!=x"]}}}, 400),
    ("invalid name", spec("-bad name-"), 400),
    ("duplicate name", spec("dup"), 409),
]


def test_bad_inputs_change_nothing(swarm: Daemon) -> None:
    assert swarm.api("POST", f"{V}/services/create", json=spec("dup")).status_code == 201
    before = swarm.api("GET", f"{V}/services").json()
    for label, body, status in BAD_INPUTS:
        resp = swarm.api("POST", f"{V}/services/create", json=body)
        assert resp.status_code == status, (label, resp.text)
        assert resp.headers["Content-Type"] == "application/json" and resp.json()["message"], label
    malformed = swarm.api("POST", f"{V}/services/create", content=b"{not json",
                          headers={"Content-Type": "application/json"})
    assert malformed.status_code == 400
    dup = swarm.api("POST", f"{V}/services/create", json=spec("dup")).json()["message"]
    assert dup.endswith("name conflicts with an existing object: service dup already exists")
    svc = swarm.api("GET", f"{V}/services/dup").json()
    stale = swarm.api("POST", f"{V}/services/{svc['ID']}/update?version={svc['Version']['Index'] - 1}",
                      json=svc["Spec"])
    assert stale.status_code == 500 and "update out of sequence" in stale.json()["message"]
    bad_version = swarm.api("POST", f"{V}/services/{svc['ID']}/update?version=x", json=svc["Spec"])
    assert bad_version.status_code == 400 and bad_version.json()["message"] == "invalid service version"
    missing = swarm.api("GET", f"{V}/services/no-such-service")
    assert missing.status_code == 404 and missing.json()["message"] == "service no-such-service not found"
    assert swarm.api("GET", f"{V}/services").json() == before
    assert swarm.api("DELETE", f"{V}/services/dup").status_code == 200


def test_unknown_image_rejects_tasks(swarm: Daemon) -> None:
    assert swarm.api("POST", f"{V}/services/create", json=spec("ghost", image="nosuch:1")).status_code == 201

    def rejected() -> bool:
        return any(t["Status"]["State"] == "rejected" and "No such image: nosuch:1" in t["Status"]["Err"]
                   for t in tasks_of(swarm, "ghost"))

    wait_for(rejected, 60, "a task rejected with 'No such image'")
    assert swarm.api("GET", f"{V}/services/ghost").status_code == 200
    assert swarm.api("DELETE", f"{V}/services/ghost").status_code == 200


def test_service_rm_leaves_nothing(swarm: Daemon) -> None:
    assert swarm.api("POST", f"{V}/services/create", json=spec("gone", 2)).status_code == 201
    ids = [t["ID"] for t in wait_running(swarm, "gone", 2)]
    assert swarm.api("DELETE", f"{V}/services/gone").status_code == 200
    assert swarm.api("GET", f"{V}/services/gone").status_code == 404

    def leftovers() -> list[str]:
        found = [f"task {i}" for i in ids if swarm.api("GET", f"{V}/tasks/{i}").status_code != 404]
        found += [n for n in netns_of(swarm.tag) if any(n.endswith(i[:12]) for i in ids)]
        found += [m for i in ids for m in mounts_under(swarm.data_root / "containers" / i)]
        found += [str(c / i) for c in cgroups_of(swarm.tag) for i in ids if (c / i).exists()]
        return found

    wait_for(lambda: not leftovers(), 60, "no task, netns, mount or cgroup of the removed service")


def test_killed_container_is_replaced(swarm: Daemon) -> None:
    assert swarm.api("POST", f"{V}/services/create", json=spec("phoenix", 1)).status_code == 201
    [first] = wait_running(swarm, "phoenix", 1)
    os.kill(first["Status"]["ContainerStatus"]["PID"], signal.SIGKILL)

    def replaced() -> bool:
        return any(t["ID"] != first["ID"] for t in running(swarm, "phoenix"))

    wait_for(replaced, 90, "a replacement task running")
    assert swarm.api("DELETE", f"{V}/services/phoenix").status_code == 200


def test_kill9_and_restart_adopts_containers(swarm: Daemon) -> None:
    assert swarm.api("POST", f"{V}/services/create", json=spec("sticky", 2)).status_code == 201
    before = {t["ID"]: t["Status"]["ContainerStatus"]["PID"] for t in wait_running(swarm, "sticky", 2)}
    swarm.kill9()
    swarm.restart()
    after = {t["ID"]: t["Status"]["ContainerStatus"]["PID"] for t in wait_running(swarm, "sticky", 2)}
    assert after == before
    all_tasks = tasks_of(swarm, "sticky")
    assert len([t for t in all_tasks if t["DesiredState"] == "running"]) == 2
    assert swarm.api("DELETE", f"{V}/services/sticky").status_code == 200

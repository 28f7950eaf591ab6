"""Two real shoald on loopback: a manager and a worker joined over the cluster port (mutual TLS).

Covers joining (and the refused joins that change nothing on either side), the worker's Docker
API (503 worker message, /info, /_ping), tasks spreading onto the worker, drain, a worker killed
with -9 (Down after ~3 heartbeats, tasks replaced on the manager) and restarted (Ready again, its
stale containers stopped), `swarm leave` on a worker and the `node rm` rules. Each test gets its
own pair; the heartbeat period is 1 s.
"""

from __future__ import annotations

import os
import shutil
import subprocess
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.daemon import BUSYBOX_TAR, SHOALD, Daemon, wait_for

pytestmark = [pytest.mark.integration, pytest.mark.xdist_group("integration-multinode")]

V = "/v1.50"
HEARTBEAT_NS = 1_000_000_000
WORKER_MESSAGE = ("This node is not a swarm manager. Worker nodes can't be used to view or modify "
                  "cluster state. Please run this command on a manager node or promote the current "
                  "node to a manager.")


def _require_host() -> None:
    if os.geteuid() != 0:
        pytest.skip("multi-node tests need root")
    if shutil.which("crun") is None:
        pytest.skip("multi-node tests need crun")
    if not SHOALD.exists() or not BUSYBOX_TAR.is_file():
        pytest.skip("needs the .venv's shoald and build/images/busybox.tar")


@pytest.fixture
def pair(tmp_path: Path) -> Iterator[tuple[Daemon, Daemon]]:
    """A manager in a swarm (heartbeat 1 s) and a daemon not in one yet."""
    _require_host()
    (tmp_path / "m").mkdir()
    (tmp_path / "w").mkdir()
    with Daemon(tmp_path / "m") as manager, Daemon(tmp_path / "w") as worker:
        resp = manager.api("POST", f"{V}/swarm/init", json={
            "ListenAddr": "0.0.0.0:2377", "AdvertiseAddr": "127.0.0.1",
            "Spec": {"Dispatcher": {"HeartbeatPeriod": HEARTBEAT_NS}}})
        assert resp.status_code == 200, resp.text
        yield manager, worker


@pytest.fixture
def joined(pair: tuple[Daemon, Daemon]) -> tuple[Daemon, Daemon]:
    manager, worker = pair
    resp = worker.join(manager)
    assert resp.status_code == 200, resp.text
    wait_for(lambda: [n["Status"]["State"] for n in nodes(manager)] == ["ready", "ready"], 30,
             "both nodes ready")
    return manager, worker


def nodes(d: Daemon) -> list[dict[str, Any]]:
    resp = d.api("GET", f"{V}/nodes")
    assert resp.status_code == 200, resp.text
    out: list[dict[str, Any]] = resp.json()
    return out


def node(d: Daemon, ref: str) -> dict[str, Any]:
    resp = d.api("GET", f"{V}/nodes/{ref}")
    assert resp.status_code == 200, resp.text
    out: dict[str, Any] = resp.json()
    return out


def tasks(d: Daemon) -> list[dict[str, Any]]:
    resp = d.api("GET", f"{V}/tasks")
    assert resp.status_code == 200, resp.text
    out: list[dict[str, Any]] = resp.json()
    return out


def running_on(d: Daemon) -> dict[str, int]:
    """Node ID -> tasks running there with desired state running."""
    out: dict[str, int] = {}
    for t in tasks(d):
        if t["Status"]["State"] == "running" and t["DesiredState"] == "running":
            out[t["NodeID"]] = out.get(t["NodeID"], 0) + 1
    return out


def create_service(d: Daemon, name: str, replicas: int) -> str:
    resp = d.api("POST", f"{V}/services/create", json={
        "Name": name,
        "TaskTemplate": {"ContainerSpec": {"Image": "busybox:latest", "Args": ["sleep", "3600"]},
                         "RestartPolicy": {"Condition": "any", "Delay": 100_000_000}},
        "Mode": {"Replicated": {"Replicas": replicas}}})
    assert resp.status_code == 201, resp.text
    service_id: str = resp.json()["ID"]
    return service_id


def running_containers(d: Daemon) -> set[str]:
    """Container IDs crun runs for daemon `d` (its own crun root)."""
    root = f"/run/shoal/crun-{d.tag}"
    out = subprocess.run(["crun", "--root", root, "list"], capture_output=True, text=True).stdout
    return {line.split()[0] for line in out.splitlines()[1:] if " running " in f" {line} "}


def worker_id(d: Daemon) -> str:
    node_id: str = d.info_swarm()["NodeID"]
    return node_id


def rotate_worker_token(manager: Daemon) -> None:
    swarm = manager.api("GET", f"{V}/swarm").json()
    resp = manager.api("POST", f"{V}/swarm/update?rotateWorkerToken=true&rotateManagerToken=false"
                       f"&version={swarm['Version']['Index']}", json=swarm["Spec"])
    assert resp.status_code == 200, resp.text


# ------------------------------------------------------------------------------------ joining
def test_refused_joins_change_nothing(pair: tuple[Daemon, Daemon]) -> None:
    manager, worker = pair
    good = manager.join_token()
    digest_part = good.split("-")[2]
    cases = {
        "SWMTKN-1-malformed": "invalid join token",
        f"SWMTKN-1-{digest_part}-{'0' * 25}": "A valid join token is necessary to join this cluster",
        f"SWMTKN-1-{'1' * 50}-{'0' * 25}": "remote CA does not match fingerprint",
        manager.join_token("manager"): "joining as a manager is not supported until high availability",
    }
    rotate_worker_token(manager)
    cases[good] = "A valid join token is necessary to join this cluster"  # rotated away
    for token, message in cases.items():
        resp = worker.join(manager, token=token)
        assert resp.status_code == 400, (token, resp.text)
        assert message in resp.json()["message"], (token, resp.text)
    assert [n["Spec"]["Role"] for n in nodes(manager)] == ["manager"]
    assert worker.info_swarm()["LocalNodeState"] == "inactive"
    assert worker.api("GET", "/_ping").headers["Swarm"] == "inactive"
    assert not (worker.data_root / "node.json").exists()
    assert not (worker.data_root / "certificates").exists()
    unreachable = worker.api("POST", f"{V}/swarm/join", json={
        "RemoteAddrs": ["127.0.0.1:1"], "JoinToken": manager.join_token()})
    assert unreachable.status_code == 503 and "could not connect" in unreachable.json()["message"]
    assert worker.join(manager).status_code == 200  # the current token works


def test_join_spreads_tasks_and_worker_api(joined: tuple[Daemon, Daemon]) -> None:
    manager, worker = joined
    listed = nodes(manager)
    assert len({n["ID"] for n in listed}) == 2
    me = worker_id(worker)
    assert node(manager, me)["Spec"]["Role"] == "worker" and "ManagerStatus" not in node(manager, me)
    info = worker.info_swarm()
    assert (info["LocalNodeState"], info["ControlAvailable"]) == ("active", False)
    assert info["RemoteManagers"][0]["Addr"] == manager.manager_addr() and "Cluster" not in info
    assert worker.api("GET", "/_ping").headers["Swarm"] == "active/worker"
    for path in ("/services", "/nodes", "/tasks", "/swarm"):
        resp = worker.api("GET", f"{V}{path}")
        assert (resp.status_code, resp.json()["message"]) == (503, WORKER_MESSAGE), path
    again = worker.join(manager)
    assert again.status_code == 503 and "already part of a swarm" in again.json()["message"]
    assert worker.api("POST", f"{V}/swarm/init", json={}).status_code == 503

    create_service(manager, "spread", 4)
    wait_for(lambda: running_on(manager) == {listed[0]["ID"]: 2, listed[1]["ID"]: 2}, 60,
             "2 tasks running on each node")
    on_worker = {t["ID"] for t in tasks(manager) if t["NodeID"] == me}
    wait_for(lambda: running_containers(worker) >= on_worker, 10, "the worker's containers in its crun root")


def test_drain_moves_tasks_and_labels(joined: tuple[Daemon, Daemon]) -> None:
    manager, worker = joined
    me = worker_id(worker)
    create_service(manager, "drained", 4)
    wait_for(lambda: running_on(manager).get(me) == 2, 60, "2 tasks on the worker")
    current = node(manager, me)
    resp = manager.api("POST", f"{V}/nodes/{me}/update?version={current['Version']['Index']}",
                       json={"Role": "worker", "Availability": "drain", "Labels": {"zone": "a"}})
    assert resp.status_code == 200, resp.text
    manager_id = worker_id(manager)
    wait_for(lambda: running_on(manager) == {manager_id: 4}, 60, "all 4 tasks on the manager")
    wait_for(lambda: not running_containers(worker), 30, "no container left on the drained worker")
    assert node(manager, me)["Spec"] == {"Labels": {"zone": "a"}, "Role": "worker", "Availability": "drain"}
    promote = manager.api("POST", f"{V}/nodes/{me}/update?version={node(manager, me)['Version']['Index']}",
                          json={"Role": "manager", "Availability": "active"})
    assert promote.status_code == 501
    assert "promoting nodes to manager is not supported until high availability" in promote.json()["message"]
    assert node(manager, me)["Spec"]["Role"] == "worker"


# ------------------------------------------------------------------------------- failures
def test_killed_worker_goes_down_and_comes_back(joined: tuple[Daemon, Daemon]) -> None:
    manager, worker = joined
    me, manager_id = worker_id(worker), worker_id(manager)
    create_service(manager, "survivor", 4)
    wait_for(lambda: running_on(manager).get(me) == 2, 60, "2 tasks on the worker")
    stale = {t["ID"] for t in tasks(manager) if t["NodeID"] == me}
    worker.kill9()
    # 3 missed heartbeats of 1 s, plus the monitor's own tick and scheduling slack.
    wait_for(lambda: node(manager, me)["Status"]["State"] == "down", 8, "the worker to be Down")
    wait_for(lambda: running_on(manager) == {manager_id: 4}, 60, "4 tasks running on the manager")
    assert running_containers(worker) >= stale  # kill -9 of shoald leaves its containers running

    worker.restart()
    wait_for(lambda: node(manager, me)["Status"]["State"] == "ready", 30, "the worker Ready again")
    wait_for(lambda: not (running_containers(worker) & stale), 30, "the stale containers stopped")

    def one_running_per_slot() -> bool:
        by_slot: dict[int, int] = {}
        for t in tasks(manager):
            if t["Status"]["State"] == "running":
                by_slot[t["Slot"]] = by_slot.get(t["Slot"], 0) + 1
        return by_slot == {1: 1, 2: 1, 3: 1, 4: 1}

    # The stale tasks' last report said running; the worker's shutdown report follows its stop.
    wait_for(one_running_per_slot, 15, "exactly one running task per slot")
    assert len(running_containers(worker) | running_containers(manager)) == 4


def test_worker_leave_and_node_rm(joined: tuple[Daemon, Daemon]) -> None:
    manager, worker = joined
    me, manager_id = worker_id(worker), worker_id(manager)
    not_down = manager.api("DELETE", f"{V}/nodes/{me}")
    assert not_down.status_code == 400
    assert not_down.json()["message"] == (f"rpc error: code = FailedPrecondition desc = node {me} is not "
                                          "down and can't be removed")
    is_manager = manager.api("DELETE", f"{V}/nodes/{manager_id}?force=1")
    assert is_manager.status_code == 400 and "must be demoted to worker before removal" in is_manager.text

    assert worker.api("POST", f"{V}/swarm/leave").status_code == 200  # no --force on a worker
    assert worker.info_swarm()["LocalNodeState"] == "inactive"
    assert not (worker.data_root / "certificates").exists()
    wait_for(lambda: node(manager, me)["Status"]["State"] == "down", 10, "the worker Down after leaving")
    assert manager.api("DELETE", f"{V}/nodes/{me}").status_code == 200
    assert [n["ID"] for n in nodes(manager)] == [manager_id]
    assert worker.join(manager).status_code == 200  # it may join again, as a new node
    wait_for(lambda: len(nodes(manager)) == 2, 10, "the worker back as a new node")
    assert worker_id(worker) != me


def test_manager_restart_keeps_the_cluster(joined: tuple[Daemon, Daemon]) -> None:
    manager, worker = joined
    addr, token, me = manager.manager_addr(), manager.join_token(), worker_id(worker)
    manager.restart()
    assert manager.manager_addr() == addr  # the same cluster port, bound again
    assert manager.join_token() == token  # the same CA: tokens still valid
    # The stopping manager marked the worker down; Ready again once its agent re-registered.
    wait_for(lambda: node(manager, me)["Status"]["State"] == "ready", 30, "the worker Ready again")
    create_service(manager, "after-restart", 2)  # a task on the worker proves the session is back
    wait_for(lambda: running_on(manager).get(me) == 1, 60, "a task running on the worker")

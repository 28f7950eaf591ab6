"""Scheduling across hosts on a 3-host lab (issue 3 §5, §4, §6): spread, constraints, placement
preferences, max replicas per node, reservations with the reason on the task, drain and pause,
global services following eligible hosts, and `service logs` from every host."""

from __future__ import annotations

import json
import re
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.cluster import (
    V,
    create,
    hostnames,
    node_id,
    remove,
    running_per_host,
    tasks,
    update_node,
    wait_running,
)
from tests.daemon import wait_for
from tests.lab import Lab, require_lab_host

pytestmark = [pytest.mark.integration, pytest.mark.xdist_group("lab-scheduling")]


@pytest.fixture(scope="module")
def lab() -> Iterator[Lab]:
    require_lab_host()
    with Lab(nodes=3, dispatcher_heartbeat="1s") as lab:
        yield lab


def test_nodes_have_distinct_hostnames_and_are_ready(lab: Lab) -> None:
    nodes = lab.api("node1", "GET", f"{V}/nodes").json()
    assert sorted(n["Description"]["Hostname"] for n in nodes) == ["node1", "node2", "node3"]
    assert {n["Status"]["State"] for n in nodes} == {"ready"}
    roles = {n["Description"]["Hostname"]: n["Spec"]["Role"] for n in nodes}
    assert roles == {"node1": "manager", "node2": "worker", "node3": "worker"}


def test_replicas_spread_evenly_over_hosts(lab: Lab) -> None:
    create(lab, "spread", replicas=6)
    assert wait_running(lab, "spread", 6) == {"node1": 2, "node2": 2, "node3": 2}
    remove(lab, "spread")


def test_constraints_on_hostname_role_and_labels(lab: Lab) -> None:
    create(lab, "onnode2", replicas=3, placement={"Constraints": ["node.hostname==node2"]})
    assert wait_running(lab, "onnode2", 3) == {"node2": 3}
    create(lab, "workers", replicas=4, placement={"Constraints": ["node.role!=manager"]})
    assert set(wait_running(lab, "workers", 4)) == {"node2", "node3"}
    update_node(lab, "node3", Labels={"zone": "b"})
    create(lab, "zoned", replicas=2, placement={"Constraints": ["node.labels.zone==b"]})
    assert wait_running(lab, "zoned", 2) == {"node3": 2}
    for name in ("onnode2", "workers", "zoned"):
        remove(lab, name)
    update_node(lab, "node3", Labels={})


def test_spread_preference_over_a_label(lab: Lab) -> None:
    update_node(lab, "node1", Labels={"rack": "r1"})
    update_node(lab, "node2", Labels={"rack": "r1"})
    update_node(lab, "node3", Labels={"rack": "r2"})
    create(lab, "racks", replicas=4,
           placement={"Preferences": [{"Spread": {"SpreadDescriptor": "node.labels.rack"}}]})
    per_host = wait_running(lab, "racks", 4)
    assert per_host["node3"] == 2 and per_host["node1"] + per_host["node2"] == 2  # half per rack
    remove(lab, "racks")
    for host in ("node1", "node2", "node3"):
        update_node(lab, host, Labels={})


def test_max_replicas_per_node_leaves_the_rest_pending_with_a_reason(lab: Lab) -> None:
    create(lab, "capped", replicas=5, placement={"MaxReplicas": 1})
    assert wait_running(lab, "capped", 3) == {"node1": 1, "node2": 1, "node3": 1}

    def pending_reason() -> str:
        errs = [t["Status"]["Err"] for t in tasks(lab, "capped") if t["Status"]["State"] == "pending"]
        return errs[0] if len(errs) == 2 and errs[0] else ""

    reason = wait_for(pending_reason, 30, "a reason on the pending tasks")
    assert reason == "no suitable node (max replicas per node limit exceed)", reason  # swarmkit's text
    remove(lab, "capped")


def test_reservation_larger_than_any_node_explains_why(lab: Lab) -> None:
    create(lab, "huge", replicas=1, resources={"Reservations": {"MemoryBytes": 1 << 50}})

    def reason() -> str:
        t = tasks(lab, "huge")
        return t[0]["Status"]["Err"] if t and t[0]["Status"]["State"] == "pending" else ""

    msg = wait_for(reason, 30, "an insufficient-memory reason")
    assert msg == "no suitable node (3 nodes have insufficient memory)" or "insufficient" in msg, msg
    remove(lab, "huge")


def test_drain_moves_tasks_away_and_pause_places_nothing_new(lab: Lab) -> None:
    create(lab, "mover", replicas=6)
    wait_running(lab, "mover", 6)
    update_node(lab, "node3", Availability="drain")
    moved = wait_for(lambda: (c := running_per_host(lab, "mover")).total() == 6 and "node3" not in c and c,
                     60, "tasks to leave the drained node")
    assert set(moved) == {"node1", "node2"}
    update_node(lab, "node3", Availability="pause")
    create(lab, "later", replicas=4)
    assert "node3" not in wait_running(lab, "later", 4)
    update_node(lab, "node3", Availability="active")
    for name in ("mover", "later"):
        remove(lab, name)


def test_global_service_follows_eligible_hosts(lab: Lab) -> None:
    create(lab, "everywhere", mode_global=True)
    assert wait_running(lab, "everywhere", 3) == {"node1": 1, "node2": 1, "node3": 1}
    update_node(lab, "node2", Availability="drain")
    assert wait_running(lab, "everywhere", 2) == {"node1": 1, "node3": 1}
    update_node(lab, "node2", Availability="active")
    assert wait_running(lab, "everywhere", 3) == {"node1": 1, "node2": 1, "node3": 1}
    remove(lab, "everywhere")


def test_service_logs_show_tasks_on_every_host(lab: Lab, tmp_path: Path) -> None:
    create(lab, "talkers", replicas=3, args=["sh", "-c", "echo hello-from-$(hostname); exec sleep 100000"])
    wait_running(lab, "talkers", 3)
    ids = {t["ID"]: hostnames(lab)[t["NodeID"]] for t in tasks(lab, "talkers")}
    assert set(ids.values()) == {"node1", "node2", "node3"}

    def all_lines() -> bool:
        resp = lab.api("node1", "GET", f"{V}/services/talkers/logs",
                       params={"stdout": "1", "stderr": "1", "details": "1"})
        body = resp.content
        return all(f"task.id={tid}".encode() in body for tid in ids) and body.count(b"hello-from-") == 3

    wait_for(all_lines, 30, "a log line from each host's task")
    # The real docker CLI shows them too, each line tagged with the host it came from.
    env = {"DOCKER_HOST": f"unix://{lab.socket('node1')}", "DOCKER_CONFIG": str(tmp_path),
           "PATH": "/usr/local/bin:/usr/bin:/bin"}
    out = subprocess.run(["docker", "service", "logs", "--no-task-ids", "talkers"], env=env,
                         capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stderr
    hosts = set(re.findall(r"^talkers\.\d@(node\d)\s+\| hello-from-", out.stdout, re.M))
    assert hosts == {"node1", "node2", "node3"}, out.stdout
    remove(lab, "talkers")


def test_worker_refuses_manager_calls(lab: Lab) -> None:
    resp = lab.api("node2", "GET", f"{V}/services")
    assert resp.status_code == 503
    assert "Worker nodes can't be used to view or modify cluster state" in resp.json()["message"]
    info = lab.api("node2", "GET", f"{V}/info").json()
    assert info["Swarm"]["LocalNodeState"] == "active" and info["Swarm"]["ControlAvailable"] is False
    assert info["Swarm"]["NodeID"] == node_id(lab, "node2")
    assert json.dumps(info["Swarm"]["RemoteManagers"]).count(lab.address("node1")) == 1

"""Cluster-level helpers for lab tests: services through node1's API, where tasks run, waits."""

from __future__ import annotations

import json
from collections import Counter
from typing import Any

from tests.daemon import wait_for
from tests.lab import Lab

V = "/v1.50"


def create(lab: Lab, name: str, *, replicas: int | None = 1, args: list[str] | None = None,
           placement: dict[str, Any] | None = None, resources: dict[str, Any] | None = None,
           mode_global: bool = False) -> str:
    template: dict[str, Any] = {
        "ContainerSpec": {"Image": "busybox:latest", "Args": args or ["sleep", "100000"], "Init": True},
        "RestartPolicy": {"Condition": "any", "Delay": 200_000_000},
    }
    if placement:
        template["Placement"] = placement
    if resources:
        template["Resources"] = resources
    mode = {"Global": {}} if mode_global else {"Replicated": {"Replicas": replicas}}
    resp = lab.api("node1", "POST", f"{V}/services/create",
                   json={"Name": name, "TaskTemplate": template, "Mode": mode})
    assert resp.status_code == 201, resp.text
    return str(resp.json()["ID"])


def remove(lab: Lab, name: str) -> None:
    lab.api("node1", "DELETE", f"{V}/services/{name}")


def tasks(lab: Lab, service: str) -> list[dict[str, Any]]:
    filters = json.dumps({"service": {service: True}})
    result: list[dict[str, Any]] = lab.api("node1", "GET", f"{V}/tasks", params={"filters": filters}).json()
    return result


def hostnames(lab: Lab) -> dict[str, str]:
    """Node ID -> hostname."""
    nodes = lab.api("node1", "GET", f"{V}/nodes").json()
    return {n["ID"]: n["Description"]["Hostname"] for n in nodes}


def node_id(lab: Lab, hostname: str) -> str:
    return next(i for i, h in hostnames(lab).items() if h == hostname)


def running_per_host(lab: Lab, service: str) -> Counter[str]:
    names = hostnames(lab)
    return Counter(names.get(t["NodeID"], "?") for t in tasks(lab, service)
                   if t["Status"]["State"] == "running" and t["DesiredState"] == "running")


def ready_nodes(lab: Lab) -> set[str]:
    nodes = lab.api("node1", "GET", f"{V}/nodes").json()
    return {n["ID"] for n in nodes if n["Status"]["State"] == "ready"}


def running_by_slot(lab: Lab, service: str) -> Counter[int]:
    """Running containers per slot on reachable nodes, whatever their desired state (a down node's
    last report is not a running container anyone can see, as the docker CLI also ignores it)."""
    ready = ready_nodes(lab)
    return Counter(t["Slot"] for t in tasks(lab, service)
                   if t["Status"]["State"] == "running" and t["NodeID"] in ready)


def stale_running(lab: Lab, service: str) -> list[str]:
    """Tasks reported running although the manager wants them stopped."""
    return [t["ID"] for t in tasks(lab, service)
            if t["Status"]["State"] == "running" and t["DesiredState"] != "running"]


def wait_running(lab: Lab, service: str, count: int, timeout: float = 60) -> Counter[str]:
    result: Counter[str] = wait_for(lambda: (c := running_per_host(lab, service)).total() == count and c,
                                    timeout, f"{count} running tasks of {service}")
    return result


def update_node(lab: Lab, hostname: str, **spec_changes: Any) -> None:
    node = lab.api("node1", "GET", f"{V}/nodes/{node_id(lab, hostname)}").json()
    spec = {**node["Spec"], **spec_changes}
    resp = lab.api("node1", "POST", f"{V}/nodes/{node['ID']}/update",
                   params={"version": node["Version"]["Index"]}, json=spec)
    assert resp.status_code == 200, resp.text

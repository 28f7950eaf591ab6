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


def wait_all_running(lab: Lab, counts: dict[str, int], timeout: float = 60) -> None:
    """wait_running for each service; on failure, its tasks' states and the hosts' log tails."""
    for name, count in counts.items():
        try:
            wait_running(lab, name, count, timeout)
        except AssertionError as e:
            states = [(t["Slot"], t["DesiredState"], t["Status"]["State"], t["Status"].get("Err"))
                      for t in tasks(lab, name)]
            raise AssertionError(f"{e}; tasks of {name}: {states}\n{lab.logs_tail()}") from None


def update_node(lab: Lab, hostname: str, **spec_changes: Any) -> None:
    node = lab.api("node1", "GET", f"{V}/nodes/{node_id(lab, hostname)}").json()
    spec = {**node["Spec"], **spec_changes}
    resp = lab.api("node1", "POST", f"{V}/nodes/{node['ID']}/update",
                   params={"version": node["Version"]["Index"]}, json=spec)
    assert resp.status_code == 200, resp.text


# -------------------------------------------------------------------------------- overlay networks
def create_network(lab: Lab, name: str, subnet: str = "", **extra: Any) -> str:
    """POST /networks/create (overlay, swarm scope) through node1; returns the network's ID."""
    body: dict[str, Any] = {"Name": name, "Driver": "overlay", "Labels": {}, **extra}
    if subnet:
        body["IPAM"] = {"Driver": "default", "Config": [{"Subnet": subnet}]}
    resp = lab.api("node1", "POST", f"{V}/networks/create", json=body)
    assert resp.status_code == 201, resp.text
    return str(resp.json()["Id"])


def create_spec(lab: Lab, spec: dict[str, Any]) -> str:
    """POST /services/create with a whole ServiceSpec; returns the service's ID."""
    resp = lab.api("node1", "POST", f"{V}/services/create", json=spec)
    assert resp.status_code == 201, resp.text
    return str(resp.json()["ID"])


def service_spec(name: str, args: list[str], *, replicas: int = 1, image: str = "busybox:latest",
                 networks: list[str] | None = None, publish: dict[int, int] | None = None,
                 endpoint_mode: str = "vip", placement: dict[str, Any] | None = None) -> dict[str, Any]:
    """A replicated service with `--init`, on `networks` (IDs or names), publishing
    {published: target} TCP ports in ingress mode."""
    template: dict[str, Any] = {
        "ContainerSpec": {"Image": image, "Args": args, "Init": True},
        "RestartPolicy": {"Condition": "any", "Delay": 200_000_000},
        "Networks": [{"Target": n} for n in networks or ()],
    }
    if placement:
        template["Placement"] = placement
    ports = [{"Protocol": "tcp", "TargetPort": target, "PublishedPort": published, "PublishMode": "ingress"}
             for published, target in (publish or {}).items()]
    return {"Name": name, "TaskTemplate": template, "Mode": {"Replicated": {"Replicas": replicas}},
            "EndpointSpec": {"Mode": endpoint_mode, "Ports": ports}}


def scale(lab: Lab, service: str, replicas: int) -> None:
    svc = lab.api("node1", "GET", f"{V}/services/{service}").json()
    spec = {**svc["Spec"], "Mode": {"Replicated": {"Replicas": replicas}}}
    resp = lab.api("node1", "POST", f"{V}/services/{svc['ID']}/update",
                   params={"version": svc["Version"]["Index"]}, json=spec)
    assert resp.status_code == 200, resp.text


def running_tasks(lab: Lab, service: str) -> list[dict[str, Any]]:
    """Tasks of `service` that run and should (with a PID)."""
    return [t for t in tasks(lab, service) if t["Status"]["State"] == "running"
            and t["DesiredState"] == "running" and (t["Status"].get("ContainerStatus") or {}).get("PID")]


def task_pid(task: dict[str, Any]) -> int:
    return int(task["Status"]["ContainerStatus"]["PID"])


def task_address(task: dict[str, Any], network_id: str) -> str:
    """The task's address on network `network_id`, without the prefix length ("" if none)."""
    for att in task.get("NetworksAttachments") or ():
        if att["Network"]["ID"] == network_id and att.get("Addresses"):
            return str(att["Addresses"][0]).split("/")[0]
    return ""


def service_vip(lab: Lab, service: str, network_id: str) -> str:
    svc = lab.api("node1", "GET", f"{V}/services/{service}").json()
    for vip in (svc.get("Endpoint") or {}).get("VirtualIPs") or ():
        if vip["NetworkID"] == network_id:
            return str(vip["Addr"]).split("/")[0]
    return ""

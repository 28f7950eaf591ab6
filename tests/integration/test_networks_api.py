"""Overlay networks through the Docker API of a real shoald (control plane only: tasks still run on
the host bridge). Covers ingress and the pools after init, network create/inspect/ls/rm and the
refusals that change nothing, VIPs and published ports on services, task addresses in the
network's subnet, exhaustion reported on the task, and addresses freed when a service goes.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Iterator
from typing import Any

import pytest

from tests.daemon import Daemon, release_bridge_cidr, unique_bridge_cidr, wait_for

pytestmark = [pytest.mark.integration, pytest.mark.xdist_group("integration-networks")]

V = "/v1.50"
GRACE_1S = 1_000_000_000


@pytest.fixture(scope="module")
def space() -> Iterator[ipaddress.IPv4Network]:
    """A /24 no host route touches, for explicit subnets (nothing is configured on the host)."""
    cidr = unique_bridge_cidr(24)
    yield ipaddress.IPv4Network(cidr)
    release_bridge_cidr(cidr)


def create_network(d: Daemon, name: str, subnet: str = "", **extra: Any) -> Any:
    body: dict[str, Any] = {"Name": name, "Driver": "overlay", "Scope": "", "Labels": {}, **extra}
    if subnet:
        body["IPAM"] = {"Driver": "default", "Config": [{"Subnet": subnet}]}
    return d.api("POST", f"{V}/networks/create", json=body)


def service(name: str, replicas: int = 1, networks: list[str] | None = None,
            ports: list[dict[str, Any]] | None = None) -> dict[str, Any]:
    return {"Name": name,
            "TaskTemplate": {"ContainerSpec": {"Image": "busybox:latest", "Args": ["sleep", "1000"],
                                               "StopGracePeriod": GRACE_1S},
                             "Networks": [{"Target": n} for n in networks or ()]},
            "Mode": {"Replicated": {"Replicas": replicas}},
            "EndpointSpec": {"Mode": "vip", "Ports": ports or []}}


def tasks_of(d: Daemon, sid: str) -> list[dict[str, Any]]:
    resp = d.api("GET", f'{V}/tasks?filters={{"service":{{"{sid}":true}}}}')
    assert resp.status_code == 200, resp.text
    out: list[dict[str, Any]] = resp.json()
    return out


def networks(d: Daemon) -> list[dict[str, Any]]:
    out: list[dict[str, Any]] = d.api("GET", f"{V}/networks").json()
    return out


def test_ingress_and_default_pool_exist_after_init(swarm: Daemon) -> None:
    ingress = [n for n in networks(swarm) if n["Name"] == "ingress"]
    assert len(ingress) == 1 and ingress[0]["Ingress"] is True
    assert ingress[0]["Scope"] == "swarm" and ingress[0]["Driver"] == "overlay"
    subnet = ipaddress.IPv4Network(ingress[0]["IPAM"]["Config"][0]["Subnet"])
    assert subnet.subnet_of(ipaddress.IPv4Network("10.0.0.0/8")) and subnet.prefixlen == 24
    cluster = swarm.info_swarm()["Cluster"]
    assert cluster["DefaultAddrPool"] == ["10.0.0.0/8"] and cluster["SubnetSize"] == 24


def test_network_create_inspect_ls_rm_and_refusals(swarm: Daemon, space: ipaddress.IPv4Network) -> None:
    subnet = str(next(space.subnets(new_prefix=26)))
    resp = create_network(swarm, "backend", subnet, Attachable=True, Labels={"tier": "db"})
    assert resp.status_code == 201, resp.text
    net_id = resp.json()["Id"]
    assert resp.json()["Warning"] == ""
    got = swarm.api("GET", f"{V}/networks/backend").json()
    assert got["Id"] == net_id and got["Attachable"] is True and got["Labels"] == {"tier": "db"}
    gateway = str(next(ipaddress.IPv4Network(subnet).hosts()))
    assert got["IPAM"]["Config"] == [{"Subnet": subnet, "Gateway": gateway}]
    assert int(got["Options"]["com.docker.network.driver.overlay.vxlanid_list"]) >= 4097
    assert swarm.api("GET", f"{V}/networks/{net_id[:6]}").json()["Name"] == "backend"
    listed = swarm.api("GET", f'{V}/networks?filters={{"name":{{"back":true}}}}').json()
    assert [n["Name"] for n in listed] == ["backend"]

    before = networks(swarm)
    refusals = [
        (create_network(swarm, "backend"), 409, "already exists"),
        (create_network(swarm, "bridgey", Driver="bridge"), 400, "not supported"),
        (create_network(swarm, "badnet", "10.1.2.3/24"), 400, "invalid subnet"),
        (create_network(swarm, "overlap", str(space)), 400, "overlaps"),
        (create_network(swarm, "bad name!"), 400, "invalid network name"),
    ]
    for resp, status, text in refusals:
        assert resp.status_code == status, resp.text
        assert text in resp.json()["message"]
    assert networks(swarm) == before

    assert swarm.api("DELETE", f"{V}/networks/backend").status_code == 204
    assert swarm.api("GET", f"{V}/networks/backend").status_code == 404


def test_service_vips_ports_task_addresses_and_in_use(swarm: Daemon, space: ipaddress.IPv4Network) -> None:
    subnet = ipaddress.IPv4Network(list(space.subnets(new_prefix=26))[1])
    assert create_network(swarm, "apinet", str(subnet)).status_code == 201
    ports = [{"Protocol": "tcp", "TargetPort": 80, "PublishedPort": 0, "PublishMode": "ingress"}]
    resp = swarm.api("POST", f"{V}/services/create", json=service("api", 2, ["apinet"], ports))
    assert resp.status_code == 201, resp.text
    sid = resp.json()["ID"]
    svc = swarm.api("GET", f"{V}/services/{sid}").json()
    net_id = swarm.api("GET", f"{V}/networks/apinet").json()["Id"]
    assert svc["Spec"]["TaskTemplate"]["Networks"] == [{"Target": net_id}]  # names become IDs
    published = svc["Endpoint"]["Ports"][0]["PublishedPort"]
    assert 30000 <= published <= 32767
    vips = {v["NetworkID"]: v["Addr"] for v in svc["Endpoint"]["VirtualIPs"]}
    assert len(vips) == 2 and ipaddress.IPv4Interface(vips[net_id]).ip in subnet

    def attached() -> list[dict[str, Any]] | None:
        ts = [t for t in tasks_of(swarm, sid) if t.get("NetworksAttachments")]
        return ts if len(ts) == 2 else None
    for task in wait_for(attached, 30, "2 tasks with network attachments"):
        mine = {a["Network"]["ID"]: a["Addresses"] for a in task["NetworksAttachments"]}
        assert set(mine) == set(vips)
        assert ipaddress.IPv4Interface(mine[net_id][0]).ip in subnet
        assert mine[net_id][0] != vips[net_id]

    clash = [{"Protocol": "tcp", "TargetPort": 81, "PublishedPort": published, "PublishMode": "ingress"}]
    resp = swarm.api("POST", f"{V}/services/create", json=service("clash", 1, None, clash))
    assert resp.status_code == 400 and f"port '{published}' is already in use by service 'api'" in resp.text
    dnsrr = service("rr", 1, None, clash)
    dnsrr["EndpointSpec"]["Mode"] = "dnsrr"
    resp = swarm.api("POST", f"{V}/services/create", json=dnsrr)
    assert resp.status_code == 400 and "can't be used with dnsrr mode" in resp.text

    resp = swarm.api("DELETE", f"{V}/networks/apinet")
    assert resp.status_code == 400 and "is in use by service api" in resp.text
    assert swarm.api("DELETE", f"{V}/services/{sid}").status_code == 200
    wait_for(lambda: swarm.api("DELETE", f"{V}/networks/apinet").status_code == 204, 30, "network rm")


def test_exhaustion_is_reported_on_the_task_and_addresses_are_freed(
        swarm: Daemon, space: ipaddress.IPv4Network) -> None:
    subnet = ipaddress.IPv4Network(list(space.subnets(new_prefix=29))[16])  # 5 addresses past the gateway
    assert create_network(swarm, "tiny", str(subnet)).status_code == 201
    sid = swarm.api("POST", f"{V}/services/create", json=service("many", 6, ["tiny"])).json()["ID"]
    # One VIP and four task addresses fill the /29: two tasks stay NEW and say why.
    def stuck() -> list[dict[str, Any]] | None:
        ts = [t for t in tasks_of(swarm, sid) if t["Status"]["Err"]]
        return ts if len(ts) == 2 else None
    for task in wait_for(stuck, 30, "2 tasks refused an address"):
        assert task["Status"]["State"] == "new"
        assert task["Status"]["Err"] == ("could not allocate IP address on network tiny: "
                                         "address pool exhausted")
    assert swarm.api("DELETE", f"{V}/services/{sid}").status_code == 200
    # Everything the service held is freed once its tasks have stopped: a new service then gets
    # a VIP and four task addresses again (until then its create is refused as exhausted).
    def created() -> str | None:
        resp = swarm.api("POST", f"{V}/services/create", json=service("again", 4, ["tiny"]))
        if resp.status_code != 201:
            assert resp.status_code == 400 and "address pool exhausted" in resp.text, resp.text
            return None
        sid: str = resp.json()["ID"]
        return sid
    sid2 = wait_for(created, 30, "a service on the freed network")

    def all_attached() -> bool:
        ts = tasks_of(swarm, sid2)
        return len(ts) == 4 and all(t.get("NetworksAttachments") for t in ts)
    wait_for(all_attached, 60, "4 tasks of the second service with addresses")
    assert swarm.api("DELETE", f"{V}/services/{sid2}").status_code == 200


def test_network_add_and_rm_on_update_replace_tasks_with_the_new_attachments(swarm: Daemon) -> None:
    """`service update --network-add/--network-rm`: tasks are replaced one slot at a time and the
    new ones carry (or no longer carry) an address on the network."""
    net = create_network(swarm, "addme").json()["Id"]
    sid = swarm.api("POST", f"{V}/services/create", json=service("netupd", replicas=2)).json()["ID"]

    def running(with_net: bool) -> bool:
        live = [t for t in tasks_of(swarm, sid)
                if t["DesiredState"] == "running" and t["Status"]["State"] == "running"]
        nets = [{a["Network"]["ID"] for a in t.get("NetworksAttachments") or []} for t in live]
        return len(live) == 2 and all((net in n) == with_net for n in nets)

    wait_for(lambda: running(False), 60, "2 tasks without the network")
    first = {t["ID"] for t in tasks_of(swarm, sid)}
    for add in (True, False):
        svc = swarm.api("GET", f"{V}/services/{sid}").json()
        spec = svc["Spec"]
        spec["TaskTemplate"]["Networks"] = [{"Target": net}] if add else []
        resp = swarm.api("POST", f"{V}/services/{sid}/update?version={svc['Version']['Index']}", json=spec)
        assert resp.status_code == 200, resp.text
        wait_for(lambda add=add: running(add), 90, f"tasks {'with' if add else 'without'} the network")
    assert not first & {t["ID"] for t in tasks_of(swarm, sid) if t["DesiredState"] == "running"}
    swarm.api("DELETE", f"{V}/services/{sid}")
    wait_for(lambda: swarm.api("DELETE", f"{V}/networks/{net}").status_code == 204, 60, "the network freed")

"""Host-mode published ports: the agent's plan, its nft rendering and application
(agent/network/hostports.py, with `nft`/`ip`/`sysctl` replaced by recorders), and the scheduler's
host-port filter (manager/scheduler/filters.py)."""

from __future__ import annotations

import asyncio
import json
from pathlib import Path
from typing import Any

import pytest

from shoal.agent.netstate import LocalAttachment
from shoal.agent.network import hostports as hp
from shoal.agent.network.hostports import HostPortRule, HostPorts
from shoal.api.protocol import NetworkState, PublishedPortSpec, ServiceEndpoints, TaskEndpoint
from shoal.api.states import TaskState
from shoal.api.types import (
    Endpoint,
    EndpointSpec,
    Node,
    NodeDescription,
    NodeSpec,
    NodeStatus,
    PortConfig,
    Service,
    ServiceSpec,
    Task,
    TaskStatus,
)
from shoal.manager.scheduler import filters, pipeline
from shoal.manager.scheduler.filters import HOST_PORT, Requirements, explain, host_ports_of
from shoal.manager.scheduler.nodeinfo import NodeInfo

of = Requirements.of  # the real one, before a test replaces it
HOST80 = PublishedPortSpec(protocol="tcp", target=80, published=8081, mode="host")
UDP53 = PublishedPortSpec(protocol="udp", target=53, published=5353, mode="host")
INGRESS = PublishedPortSpec(protocol="tcp", target=80, published=8080, mode="ingress")


def ep(task_id: str, address: str, serving: bool = True) -> TaskEndpoint:
    return TaskEndpoint(task_id=task_id, node_id="n", address=address, serving=serving)


def svc(sid: str, net: str, ports: list[PublishedPortSpec], *tasks: TaskEndpoint) -> ServiceEndpoints:
    return ServiceEndpoints(service_id=sid, name=sid, network_id=net, endpoint_mode="vip",
                            ports=ports, tasks=list(tasks))


def state(*services: ServiceEndpoints, node_addr: str = "192.168.5.1") -> NetworkState:
    return NetworkState(node_addr=node_addr, host_ports=list(services))


# ---------------------------------------------------------------------------------- the plan
def test_plan_serving_local_tasks_host_ports_only() -> None:
    web = svc("web", "n-app", [HOST80, INGRESS], ep("t1", "10.0.1.2"), ep("t2", "10.0.1.3"),
              ep("t3", "10.0.1.4", serving=False))
    local = {"t1": "172.30.0.2", "t3": "172.30.0.4"}  # t2 runs elsewhere, t3 is not serving
    assert hp.plan(state(web), local) == [HostPortRule("tcp", 8081, ("172.30.0.2 . 80",))]


def test_plan_reads_host_ports_only_and_sorts() -> None:
    web = svc("web", "", [HOST80, UDP53], ep("t1", ""))
    other = svc("other", "", [PublishedPortSpec(protocol="tcp", target=8, published=7000, mode="host")],
                ep("t9", ""))
    on_overlay = svc("web", "n-a", [HOST80], ep("t5", "10.0.1.5"))  # `services`: not a host-port entry
    st = NetworkState(node_addr="192.168.5.1", services=[on_overlay], host_ports=[web, other])
    rules = hp.plan(st, {"t1": "172.30.0.2", "t9": "172.30.0.9", "t5": "172.30.0.5"})
    assert rules == [HostPortRule("tcp", 7000, ("172.30.0.9 . 8",)),
                     HostPortRule("tcp", 8081, ("172.30.0.2 . 80",)),
                     HostPortRule("udp", 5353, ("172.30.0.2 . 53",))]


def test_plan_is_empty_without_local_serving_tasks_or_host_ports() -> None:
    web = svc("web", "n-app", [HOST80], ep("t1", "10.0.1.2", serving=False))
    assert hp.plan(state(web), {"t1": "172.30.0.2"}) == []
    assert hp.plan(state(svc("web", "n", [INGRESS], ep("t1", "10.0.1.2"))), {"t1": "172.30.0.2"}) == []
    assert hp.plan(state(svc("web", "n", [HOST80], ep("t1", "10.0.1.2"))), {"t1": ""}) == []


# ---------------------------------------------------------------------------------- rendering
RULE = HostPortRule("tcp", 8081, ("172.30.0.2 . 80",))


def test_render_with_a_default_route_serves_local_clients_and_forwards_nothing() -> None:
    script = hp.render([RULE], "192.168.5.1", bridge="shb-abc", remote=False)
    assert script.startswith("table ip shoal_hostports\ndelete table ip shoal_hostports\n")
    assert "hook output" in script
    assert "ip daddr 192.168.5.1 tcp dport 8081 dnat ip to 172.30.0.2:80" in script
    assert "masquerade" not in script and "snat" not in script  # the task sees the client
    assert "prerouting" not in script and "ct status dnat accept" not in script
    assert 'iifname "shb-abc" drop' in script and 'oifname "shb-abc" drop' in script
    assert "forward" not in hp.render([RULE], "192.168.5.1", bridge=None, remote=False)


def test_render_without_a_default_route_serves_remote_clients_through_a_filter() -> None:
    script = hp.render([RULE], "192.168.5.1", bridge="shb-abc", remote=True)
    assert script.count("ip daddr 192.168.5.1 tcp dport 8081 dnat ip to 172.30.0.2:80") == 2
    assert "hook prerouting" in script and "hook forward" in script
    assert 'iifname "shb-abc" drop' in script and 'oifname "shb-abc" drop' in script
    assert script.index("ct status dnat accept") < script.index('iifname "shb-abc" drop')


def test_render_balances_several_local_tasks_and_empty_only_deletes() -> None:
    rule = HostPortRule("tcp", 8081, ("172.30.0.2 . 80", "172.30.0.3 . 80"))
    script = hp.render([rule], "192.168.5.1", bridge=None, remote=False)
    balanced = "numgen inc mod 2 map { 0 : 172.30.0.2 . 80, 1 : 172.30.0.3 . 80 }"
    assert f"dnat ip addr . port to {balanced}" in script
    assert hp.render([], "192.168.5.1", bridge="x", remote=True) == \
        "table ip shoal_hostports\ndelete table ip shoal_hostports\n"


def test_device_with_finds_the_underlay_and_the_host_bridge() -> None:
    addrs = [{"ifname": "lo", "addr_info": [{"family": "inet", "local": "127.0.0.1", "prefixlen": 8}]},
             {"ifname": "eth0", "addr_info": [{"family": "inet", "local": "192.168.5.1", "prefixlen": 24}]},
             {"ifname": "shb-x", "addr_info": [{"family": "inet", "local": "172.30.0.1", "prefixlen": 24}]}]
    assert hp.device_with(addrs, "192.168.5.1", subnet=False) == "eth0"
    assert hp.device_with(addrs, "172.30.0.7", subnet=True) == "shb-x"
    assert hp.device_with(addrs, "172.30.0.7", subnet=False) is None


# ------------------------------------------------------------------------------- application
class Fake:
    """Stands in for nft (`run`), `ip` and sysctl; `default route` decides nothing here (the caller
    passes forward_allowed)."""

    def __init__(self, monkeypatch: pytest.MonkeyPatch) -> None:
        self.scripts: list[str] = []
        self.sysctls: list[tuple[str, str]] = []
        monkeypatch.setattr(hp, "run", self._run)
        monkeypatch.setattr(hp, "ipn", self._ipn)
        monkeypatch.setattr(hp, "sysctl", self._sysctl)

    async def _run(self, argv: list[str], *, stdin: str | None = None, check: bool = True) -> str:
        assert argv[-2:] == ["-f", "-"]
        self.scripts.append(stdin or "")
        return ""

    async def _ipn(self, netns: str | None, *args: str, **kw: Any) -> str:
        if "eth0" in args:
            return json.dumps([{"ifname": "eth0", "addr_info": [{"local": "172.30.0.2", "prefixlen": 24}]}])
        return json.dumps([
            {"ifname": "ul0", "addr_info": [{"family": "inet", "local": "192.168.5.1", "prefixlen": 24}]},
            {"ifname": "shb-x", "addr_info": [{"family": "inet", "local": "172.30.0.1", "prefixlen": 24}]}])

    async def _sysctl(self, netns: str | None, key: str, value: str) -> None:
        self.sysctls.append((key, value))


def test_sync_programs_once_forwards_only_when_allowed_and_clears(monkeypatch: pytest.MonkeyPatch) -> None:
    async def scenario() -> None:
        fake = Fake(monkeypatch)
        ports = HostPorts("lab-ns")
        await ports.sync([], "192.168.5.1", forward_allowed=True, mesh_dev=None)
        assert fake.scripts == []  # nothing was ever programmed: nothing to delete
        await ports.sync([RULE], "192.168.5.1", forward_allowed=True, mesh_dev=None)
        await ports.sync([RULE], "192.168.5.1", forward_allowed=True, mesh_dev=None)
        assert len(fake.scripts) == 1 and "hook prerouting" in fake.scripts[0]
        assert 'iifname "shb-x" drop' in fake.scripts[0]
        assert sorted(fake.sysctls) == [("net.ipv4.conf.shb-x.forwarding", "1"),
                                        ("net.ipv4.conf.ul0.forwarding", "1")]
        fake.sysctls.clear()
        await ports.clear(mesh_dev="ul0")  # the mesh still forwards on ul0: left on
        assert fake.scripts[-1] == "table ip shoal_hostports\ndelete table ip shoal_hostports\n"
        assert fake.sysctls == [("net.ipv4.conf.shb-x.forwarding", "0")]
    asyncio.run(scenario())


def test_sync_with_a_default_route_never_forwards(monkeypatch: pytest.MonkeyPatch) -> None:
    async def scenario() -> None:
        fake = Fake(monkeypatch)
        ports = HostPorts(None)
        await ports.sync([RULE], "192.168.5.1", forward_allowed=False, mesh_dev=None)
        assert len(fake.scripts) == 1 and "prerouting" not in fake.scripts[0]
        assert "ct status dnat accept" not in fake.scripts[0] and 'iifname "shb-x" drop' in fake.scripts[0]
        assert fake.sysctls == []
        assert await hp.task_bridge_address("t-ns") == "172.30.0.2/24"
    asyncio.run(scenario())


# --------------------------------------------------------------------------- reply routing
def test_task_reply_routing_marks_off_subnet_connections_and_routes_them_via_the_host() -> None:
    script = hp.render_task("172.30.0.0/24")
    assert script.startswith("table ip shoal_hostreply\ndelete table ip shoal_hostreply\n")
    assert 'iifname "eth0" ct state new ip saddr != 172.30.0.0/24 ct mark set 0x5200' in script
    assert "type route hook output" in script
    cmds = hp.task_route_commands("172.30.0.1", (53, 5000), old_prefs=[0, 0x5200, 41000, 32766, 41003])
    assert cmds == ["rule del pref 20992", "rule del pref 41000", "rule del pref 41003",
                    "rule add pref 20992 fwmark 20992 lookup 20992",
                    "route replace default via 172.30.0.1 dev eth0 table 20992",
                    "rule add pref 41000 ipproto udp sport 53 lookup 20992",
                    "rule add pref 41001 ipproto udp sport 5000 lookup 20992"]


def test_task_udp_ports_are_the_host_mode_udp_targets_of_its_services() -> None:
    web = svc("web", "", [HOST80, UDP53, PublishedPortSpec(protocol="udp", target=9, published=0,
                                                           mode="host")], ep("t1", ""))
    st = state(web, svc("dns", "", [PublishedPortSpec(protocol="udp", target=54, published=54,
                                                      mode="host")], ep("t2", "")))
    assert hp.task_udp_ports(st, "t1") == (53,)
    assert hp.task_udp_ports(st, "t2") == (54,)
    assert hp.task_udp_ports(st, "t3") == ()


# ---------------------------------------------------------------------------------- scheduler
def node(nid: str) -> Node:
    return Node(id=nid, spec=NodeSpec(availability="active"), status=NodeStatus(state="ready"),
                description=NodeDescription(hostname=nid))


def task(tid: str, service: str, node_id: str = "") -> Task:
    return Task(id=tid, service_id=service, node_id=node_id,
                status=TaskStatus(state=TaskState.RUNNING if node_id else TaskState.PENDING))


def service(sid: str, *ports: PortConfig, in_endpoint: bool = True) -> Service:
    if in_endpoint:
        return Service(id=sid, endpoint=Endpoint(ports=list(ports)))
    return Service(id=sid, spec=ServiceSpec(endpoint_spec=EndpointSpec(ports=list(ports))))


def port(published: int, mode: str = "host", protocol: str = "tcp") -> PortConfig:
    return PortConfig(protocol=protocol, target_port=80, published_port=published, publish_mode=mode)


def test_host_ports_of_a_service_are_its_host_mode_ones() -> None:
    web = service("web", port(8081), port(8080, mode="ingress"), port(5353, protocol="udp"))
    assert host_ports_of(web) == {(8081, "tcp"), (5353, "udp")}
    assert host_ports_of(service("s", port(9000), in_endpoint=False)) == {(9000, "tcp")}
    assert host_ports_of(Service(id="none")) == frozenset()


def test_a_node_using_the_same_host_port_and_protocol_is_refused() -> None:
    table = {"web": host_ports_of(service("web", port(8081))),
             "other": host_ports_of(service("other", port(8081))),
             "udp": host_ports_of(service("udp", port(8081, protocol="udp")))}
    req = Requirements.of(task("new", "web"), table)
    assert req.host_ports == {(8081, "tcp")}
    busy = NodeInfo.of(node("n1"), [task("a", "web", "n1")])  # its own service counts too
    taken = NodeInfo.of(node("n2"), [task("b", "other", "n2")])
    udp_only = NodeInfo.of(node("n3"), [task("c", "udp", "n3")])
    assert filters.check_all(req, busy) == HOST_PORT
    assert filters.check_dynamic(req, taken) == HOST_PORT
    assert filters.check_all(req, udp_only) is None
    assert filters.check_all(req, NodeInfo.of(node("n4"))) is None
    assert filters.check_all(Requirements.of(task("new", "web")), busy) is None  # no table: passes


def test_placing_a_task_makes_its_node_refuse_the_next_one() -> None:
    table = {"web": frozenset({(8081, "tcp")})}
    req = Requirements.of(task("t1", "web"), table)
    info = NodeInfo.of(node("n1"))
    assert filters.check_dynamic(req, info) is None
    info.place("t1", "web", 0, 0)
    assert filters.check_dynamic(req, info) == HOST_PORT
    info.remove_task("t1")
    assert filters.check_dynamic(req, info) is None


def test_host_port_comes_before_max_replicas_and_is_explained() -> None:
    assert explain({HOST_PORT: 1}) == "no suitable node (host-mode port already in use on 1 node)"
    assert explain({HOST_PORT: 3}) == "no suitable node (host-mode port already in use on 3 nodes)"
    assert explain({filters.MAX_REPLICAS: 1, HOST_PORT: 2, filters.NOT_READY: 1}) == (
        "no suitable node (1 node not available for new tasks; host-mode port already in use on 2 nodes; "
        "max replicas per node limit exceed)")


def test_schedule_with_a_port_table_places_one_per_node_and_explains_the_rest(
        monkeypatch: pytest.MonkeyPatch) -> None:
    # The pipeline as the Scheduler would run it once it hands over the services' host ports.
    table = {"web": frozenset({(8081, "tcp")})}
    monkeypatch.setattr(pipeline.Requirements, "of",
                        classmethod(lambda cls, t, port_table=None: of(t, table)))
    infos = {n: NodeInfo.of(node(n)) for n in ("n1", "n2", "n3")}
    decisions = pipeline.schedule([task(f"t{i}", "web") for i in range(4)], infos)
    assert sorted(decisions.assigned.values()) == ["n1", "n2", "n3"]
    assert list(decisions.unplaceable.values()) == [
        "no suitable node (host-mode port already in use on 3 nodes)"]


# ------------------------------------------------------------------------- HostNetwork wiring
class NoDns:
    records: Any = None

    async def add_container(self, *args: Any) -> None:
        pass

    async def remove_container(self, *args: Any) -> None:
        pass


@pytest.mark.parametrize("default_route", [False, True])
def test_host_network_programs_serving_local_tasks_and_drops_them(monkeypatch: pytest.MonkeyPatch,
                                                                   default_route: bool) -> None:
    from shoal.agent.network import host as hostmod
    from shoal.agent.network.host import HostNetwork

    synced: list[tuple[list[HostPortRule], bool]] = []

    async def sync(self: HostPorts, rules: list[HostPortRule], node_addr: str, *, forward_allowed: bool,
                   mesh_dev: str | None) -> None:
        synced.append((list(rules), forward_allowed))

    async def ipn(netns: str | None, *args: str, **kw: Any) -> str:
        return '[{"dst": "default"}]' if default_route and args[-1] == "default" else "[]"

    async def bridge_address(netns: str) -> str:
        return "172.30.0.2/24"

    prepared: list[tuple[str, str, tuple[int, ...]]] = []

    async def prepare_task(netns: str, cidr: str, udp: tuple[int, ...]) -> None:
        prepared.append((netns, cidr, udp))

    async def nothing(*args: Any, **kw: Any) -> None:
        pass
    monkeypatch.setattr(HostPorts, "sync", sync)
    monkeypatch.setattr(hostmod.overlay, "ipn", ipn)
    monkeypatch.setattr(hp, "task_bridge_address", bridge_address)
    monkeypatch.setattr(hp, "prepare_task", prepare_task)
    for name in ("ensure_network", "set_peers", "attach", "detach", "remove_network"):
        monkeypatch.setattr(hostmod.overlay, name, nothing)
    monkeypatch.setattr(hostmod.lb, "program_vips", nothing)

    async def scenario() -> None:
        net = HostNetwork(NoDns(), fallback_addr="192.168.5.1")  # type: ignore[arg-type]
        await net.adopt_task("t1", "ns-t1", Path("/x"), [LocalAttachment(
            network_id="n-app", vni=4097, subnet="10.0.1.0/24", address_cidr="10.0.1.2/24", ifname="eth1",
            ingress=False)])
        await net.apply(state(svc("web", "", [HOST80], ep("t1", ""))))
        assert synced[-1] == ([RULE], not default_route)
        assert prepared == [("ns-t1", "172.30.0.2/24", ())]  # before its port was programmed
        await net.apply(state(svc("web", "", [HOST80], ep("t1", "", serving=False))))
        assert synced[-1] == ([], False)
        assert len(prepared) == 1  # unchanged ports: not prepared again
    asyncio.run(scenario())


def test_host_network_publishes_a_task_without_overlay_networks(monkeypatch: pytest.MonkeyPatch) -> None:
    from shoal.agent.exec.protocol import ExecError
    from shoal.agent.network import host as hostmod
    from shoal.agent.network.host import HostNetwork

    synced: list[list[HostPortRule]] = []

    async def sync(self: HostPorts, rules: list[HostPortRule], node_addr: str, **kw: Any) -> None:
        synced.append(list(rules))

    async def ipn(netns: str | None, *args: str, **kw: Any) -> str:
        return "[]"

    async def bridge_address(netns: str) -> str:
        return {"ns-t1": "172.30.0.2/24", "ns-t2": "172.30.0.3/24"}[netns]

    prepared: list[tuple[str, tuple[int, ...]]] = []
    failures = ["ns-t2"]

    async def prepare_task(netns: str, cidr: str, udp: tuple[int, ...]) -> None:
        if netns in failures:
            failures.remove(netns)
            raise ExecError("netns busy")  # retried with the next state
        prepared.append((netns, udp))
    monkeypatch.setattr(HostPorts, "sync", sync)
    monkeypatch.setattr(hostmod.overlay, "ipn", ipn)
    monkeypatch.setattr(hp, "task_bridge_address", bridge_address)
    monkeypatch.setattr(hp, "prepare_task", prepare_task)

    async def scenario() -> None:
        net = HostNetwork(NoDns(), fallback_addr="192.168.5.1")  # type: ignore[arg-type]
        for tid in ("t1", "t2"):
            assert await net.attach_task(Task(id=tid), f"ns-{tid}", Path("/x")) == []
            assert net.uses_networks(tid)
        web = svc("web", "", [HOST80, UDP53], ep("t2", ""), ep("t1", ""))
        await net.apply(state(web))
        assert prepared == [("ns-t1", (53,))]
        assert synced[-1] == [HostPortRule("tcp", 8081, ("172.30.0.2 . 80",)),
                              HostPortRule("udp", 5353, ("172.30.0.2 . 53",))]
        await net.apply(state(web, node_addr="192.168.5.1"))  # the same view again: t2 retried
        assert prepared[-1] == ("ns-t2", (53,))
        assert synced[-1][0].targets == ("172.30.0.2 . 80", "172.30.0.3 . 80")
        await net.detach_task("t1", "ns-t1", [])
        assert not net.uses_networks("t1")
        assert synced[-1][0].targets == ("172.30.0.3 . 80",)
    asyncio.run(scenario())

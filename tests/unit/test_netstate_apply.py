"""NetworkState on a host: the pure plan (agent/netstate.py), HostNetwork with the data-path
libraries replaced by recorders (agent/network/host.py), and the agent handing states over."""

from __future__ import annotations

import asyncio
import ipaddress
from pathlib import Path
from typing import Any

import pytest

from shoal.agent import netstate as ns
from shoal.agent.agent import Agent
from shoal.agent.exec.protocol import ExecError
from shoal.agent.network import host as hostmod
from shoal.agent.network import mesh
from shoal.agent.network.dnsrecords import DnsRecords
from shoal.agent.network.host import HostNetwork
from shoal.agent.network.lb import VipService
from shoal.agent.network.mesh import PublishedPort
from shoal.api import protocol as proto
from shoal.api.clock import SystemClock
from shoal.api.ipam import make_network
from shoal.api.protocol import (
    NetworkState,
    OverlayNetwork,
    PublishedPortSpec,
    ServiceEndpoints,
    TaskEndpoint,
)
from shoal.api.types import NetworkAttachment, NetworkSpec, NodeDescription, Task
from shoal.testing.fake_executor import FakeExecutor

APP = OverlayNetwork(network_id="n-app", name="app", vni=4097, subnet="10.0.1.0/24", gateway="10.0.1.1")
ING = OverlayNetwork(network_id="n-ing", name="ingress", vni=4096, subnet="10.0.0.0/24",
                     gateway="10.0.0.1", ingress=True)


def ep(task_id: str, address: str, serving: bool = True, node: str = "me") -> TaskEndpoint:
    return TaskEndpoint(task_id=task_id, node_id=node, address=address, serving=serving,
                        aliases=[f"web.1.{task_id}"])


def state(**kw: Any) -> NetworkState:
    web_app = ServiceEndpoints(service_id="s-web", name="web", network_id="n-app", endpoint_mode="vip",
                               vip="10.0.1.100", aliases=["www"],
                               tasks=[ep("t1", "10.0.1.2"), ep("t2", "10.0.1.3", serving=False)])
    web_ing = ServiceEndpoints(
        service_id="s-web", name="web", network_id="n-ing", endpoint_mode="vip", vip="10.0.0.100",
        ports=[PublishedPortSpec(protocol="tcp", target=80, published=8080, mode="ingress"),
               PublishedPortSpec(protocol="tcp", target=81, published=9090, mode="host")],
        tasks=[ep("t1", "10.0.0.2"), ep("t2", "10.0.0.3", serving=False)])
    rr = ServiceEndpoints(service_id="s-rr", name="rr", network_id="n-app", endpoint_mode="dnsrr",
                          tasks=[ep("t3", "10.0.1.7"), ep("t4", "10.0.1.8")])
    base: dict[str, Any] = dict(
        node_addr="192.168.5.1", ingress_addr="10.0.0.250", networks=[APP, ING],
        peers={"n-app": ["192.168.5.2", "192.168.5.1"], "n-ing": ["192.168.5.2", "192.168.5.3"]},
        ingress_hosts=["10.0.0.250", "10.0.0.251", "10.0.0.252"], services=[web_app, web_ing, rr])
    base.update(kw)
    return NetworkState(**base)


def task_on(task_id: str, *nets: tuple[OverlayNetwork, str]) -> Task:
    atts = [NetworkAttachment(
        network=make_network(NetworkSpec(name=n.name, ingress=n.ingress),
                             subnet=ipaddress.IPv4Network(n.subnet), gateway=None, vni=n.vni,
                             network_id=n.network_id),
        addresses=[address]) for n, address in nets]
    return Task(id=task_id, networks_attachments=atts)


# ---------------------------------------------------------------------------------- the plan
def test_attachments_are_sorted_by_network_and_numbered_after_eth0() -> None:
    task = task_on("t1", (ING, "10.0.0.2/24"), (APP, "10.0.1.2/24"))
    atts = ns.attachments_of(task)
    assert [(a.network_id, a.ifname, a.vni, a.address_cidr, a.ingress) for a in atts] == [
        ("n-app", "eth1", 4097, "10.0.1.2/24", False), ("n-ing", "eth2", 4096, "10.0.0.2/24", True)]
    assert atts[0].address == "10.0.1.2"
    assert ns.attachments_of(Task(id="plain")) == []
    unallocated = Task(id="x", networks_attachments=[NetworkAttachment(addresses=["10.0.1.2/24"])])
    assert ns.attachments_of(unallocated) == []


def test_dns_records_follow_vip_dnsrr_serving_and_aliases() -> None:
    records = ns.dns_records(state())
    assert records.lookup({"n-app"}, "web").addresses == ("10.0.1.100",)
    assert records.lookup({"n-app"}, "www.").addresses == ("10.0.1.100",)
    assert records.lookup({"n-app"}, "tasks.web").addresses == ("10.0.1.2",)  # t2 is draining
    assert records.lookup({"n-app"}, "web.1.t1").addresses == ("10.0.1.2",)
    assert records.lookup({"n-app"}, "web.1.t2").addresses == ()
    assert set(records.lookup({"n-app"}, "rr").addresses) == {"10.0.1.7", "10.0.1.8"}
    assert records.lookup({"n-ing"}, "rr").nxdomain  # isolation: rr is not on ingress
    assert records.lookup({"other"}, "web").nxdomain


def test_vip_tables_hold_the_serving_tasks_of_vip_services_on_the_task_networks() -> None:
    s = state()
    assert ns.vip_table(s, {"n-app"}) == [VipService(vip="10.0.1.100", backends=("10.0.1.2",))]
    assert ns.vip_table(s, {"n-app", "n-ing"}) == [
        VipService(vip="10.0.1.100", backends=("10.0.1.2",)),
        VipService(vip="10.0.0.100", backends=("10.0.0.2",))]
    assert ns.vip_table(s, {"elsewhere"}) == []
    none_serving = state(services=[msgspec_replace(s.services[0], tasks=[ep("t1", "10.0.1.2", False)])])
    assert ns.vip_table(none_serving, {"n-app"}) == [VipService(vip="10.0.1.100", backends=())]


def msgspec_replace(obj: Any, **kw: Any) -> Any:
    import msgspec

    return msgspec.structs.replace(obj, **kw)


def test_ingress_plan_has_ingress_mode_ports_and_serving_ingress_addresses() -> None:
    plan = ns.ingress_plan(state())
    assert plan is not None and plan.network == ING
    assert plan.ports == (PublishedPort(8080, 80, "tcp"),)  # the host-mode port is not meshed
    assert plan.backends == {8080: ["10.0.0.2"]}
    assert ns.ingress_plan(state(networks=[APP])) is None


def test_ingress_udp_ports_of_a_task_and_its_udp_reply_rules() -> None:
    udp = PublishedPortSpec(protocol="udp", target=53, published=5353, mode="ingress")
    s = state()
    web_ing = msgspec_replace(s.services[1], ports=[*s.services[1].ports, udp])
    s = state(services=[s.services[0], web_ing, s.services[2]])
    assert ns.ingress_udp_ports(s) == {"t1": (53,), "t2": (53,)}  # rr's t3/t4 are not on ingress
    assert ns.ingress_udp_ports(state(networks=[APP])) == {}
    cmds = mesh.backend_route_commands("eth2", ["10.0.0.250", "10.0.0.251"], "10.0.0.250", (53,),
                                       old_prefs=[0, 0x5301, 40000, 32766])
    assert cmds == ["rule del pref 21249", "rule del pref 40000",
                    "rule add pref 21249 fwmark 21249 lookup 21249",
                    "route replace default via 10.0.0.250 dev eth2 table 21249",
                    "rule add pref 21250 fwmark 21250 lookup 21250",
                    "route replace default via 10.0.0.251 dev eth2 table 21250",
                    # UDP replies of port 53 leave the socket via this host, then are re-routed.
                    "route replace default via 10.0.0.250 dev eth2 table 21248",
                    "rule add pref 40000 ipproto udp sport 53 lookup 21248"]
    assert not [c for c in mesh.backend_route_commands("eth2", ["10.0.0.250"], "", (53,), [])
                if "udp" in c]  # no own ingress address (a default route here): no UDP fallback


def test_peers_leave_this_host_out() -> None:
    assert ns.peers_of(state(), "n-app") == {"192.168.5.2"}
    assert ns.peers_of(state(), "unknown") == set()


# ----------------------------------------------------------------------- HostNetwork, faked
class FakeDns:
    def __init__(self) -> None:
        self.records = DnsRecords()
        self.containers: dict[str, set[str]] = {}
        self.closed = False

    async def add_container(self, task_id: str, netns_path: Path, networks: set[str]) -> None:
        self.containers[task_id] = set(networks)

    async def remove_container(self, task_id: str) -> None:
        self.containers.pop(task_id, None)

    async def close(self) -> None:
        self.closed = True


class Recorder:
    """Stands in for overlay/lb/mesh: records each call as (name, args...)."""

    def __init__(self, monkeypatch: pytest.MonkeyPatch, default_route: bool) -> None:
        self.calls: list[tuple[Any, ...]] = []
        self.default_route = default_route
        for mod, names in ((hostmod.overlay, ("ensure_network", "set_peers", "attach", "detach",
                                               "remove_network")),
                           (hostmod.lb, ("program_vips",)),
                           (hostmod.mesh, ("program_ingress", "clear_ingress", "prepare_backend"))):
            for name in names:
                monkeypatch.setattr(mod, name, self._recorder(name))
        monkeypatch.setattr(hostmod.overlay, "ipn", self._ipn)

    def _recorder(self, name: str) -> Any:
        async def record(*args: Any, **kw: Any) -> None:
            self.calls.append((name, *args, *sorted(kw.items())))
        return record

    async def _ipn(self, netns: str | None, *args: str, **kw: Any) -> str:
        if args[-1] == "default":
            return '[{"dst": "default"}]' if self.default_route else "[]"
        return '[{"ifname": "eth0", "addr_info": [{"local": "192.168.5.1"}]}]'

    def named(self, name: str) -> list[tuple[Any, ...]]:
        return [c for c in self.calls if c[0] == name]


def make_host(monkeypatch: pytest.MonkeyPatch, *, default_route: bool = False,
              wait_s: float = 5.0) -> tuple[HostNetwork, FakeDns, Recorder]:
    dns = FakeDns()
    rec = Recorder(monkeypatch, default_route)
    return HostNetwork(dns, state_wait_s=wait_s, fallback_addr="192.168.5.99"), dns, rec  # type: ignore[arg-type]


def test_apply_ensures_networks_peers_dns_vips_and_the_mesh(monkeypatch: pytest.MonkeyPatch) -> None:
    async def scenario() -> None:
        net, dns, rec = make_host(monkeypatch)
        await net.apply(state())
        await net.attach_task(task_on("t1", (APP, "10.0.1.2/24"), (ING, "10.0.0.2/24")), "ns-t1",
                              Path("/run/netns/ns-t1"))
        assert ("ensure_network", 4097, "10.0.1.0/24", None, "192.168.5.1", ("netns", None),
                ("vxlan", True)) in rec.calls  # another host shares it: a vxlan device
        assert ("ensure_network", 4096, "10.0.0.0/24", "10.0.0.250", "192.168.5.1", ("netns", None),
                ("vxlan", True)) in rec.calls  # ingress: the host's own ingress address
        assert ("set_peers", 4097, {"192.168.5.2"}, ("netns", None)) in rec.calls
        assert [c[1:4] for c in rec.named("attach")] == [("ns-t1", 4097, "eth1"), ("ns-t1", 4096, "eth2")]
        assert dns.containers == {"t1": {"n-app", "n-ing"}}
        assert dns.records.lookup({"n-app"}, "web").addresses == ("10.0.1.100",)
        assert rec.named("program_vips")[-1][1] == "ns-t1"
        assert rec.named("prepare_backend")[-1][1:3] == ("ns-t1", "eth2")
        ingress = rec.named("program_ingress")[-1]
        assert ingress[1:3] == ((PublishedPort(8080, 80),), {8080: ["10.0.0.2"]})
        assert ("underlay_dev", "eth0") in ingress and ("ingress_vni", 4096) in ingress

        rec.calls.clear()
        await net.apply(state())  # nothing changed: nothing reprogrammed
        assert not rec.named("program_vips") and not rec.named("program_ingress")
        assert not rec.named("ensure_network") and not rec.named("set_peers")

        t1_gone = state(services=[msgspec_replace(s, tasks=[t for t in s.tasks if t.task_id != "t1"])
                                  for s in state().services])
        await net.apply(t1_gone)
        assert rec.named("program_vips")[-1][2] == [VipService(vip="10.0.1.100", backends=()),
                                                     VipService(vip="10.0.0.100", backends=())]
        assert rec.named("program_ingress")[-1][2] == {8080: []}
    asyncio.run(scenario())


def test_no_mesh_where_there_is_a_default_route(monkeypatch: pytest.MonkeyPatch) -> None:
    async def scenario() -> None:
        net, _, rec = make_host(monkeypatch, default_route=True)
        await net.apply(state())
        assert not rec.named("program_ingress")
        assert ("ensure_network", 4096, "10.0.0.0/24", None, "192.168.5.1", ("netns", None),
                ("vxlan", True)) in rec.calls
    asyncio.run(scenario())


def test_unlisted_and_unused_networks_are_removed(monkeypatch: pytest.MonkeyPatch) -> None:
    async def scenario() -> None:
        net, dns, rec = make_host(monkeypatch)
        await net.apply(state())
        task = task_on("t1", (APP, "10.0.1.2/24"))
        atts = await net.attach_task(task, "ns-t1", Path("/x"))
        await net.apply(state(networks=[APP]))  # ingress gone: mesh cleared, network removed
        assert rec.named("clear_ingress") and [c[1] for c in rec.named("remove_network")] == [4096]
        await net.apply(state(networks=[], services=[]))  # app still used by t1: kept
        assert [c[1] for c in rec.named("remove_network")] == [4096]
        await net.detach_task("t1", "ns-t1", atts)
        assert [c[1] for c in rec.named("remove_network")] == [4096, 4097]
        assert ("detach", "ns-t1", "eth1", ("host_netns", None)) in rec.calls and dns.containers == {}
        await net.close()
        assert dns.closed
    asyncio.run(scenario())


def test_attach_before_any_state_waits_then_uses_the_fallback(monkeypatch: pytest.MonkeyPatch) -> None:
    async def scenario() -> None:
        net, _, rec = make_host(monkeypatch, wait_s=0.01)
        await net.attach_task(task_on("t1", (APP, "10.0.1.2/24")), "ns-t1", Path("/x"))
        assert rec.named("ensure_network") == [
            ("ensure_network", 4097, "10.0.1.0/24", None, "192.168.5.99", ("netns", None),
             ("vxlan", False))]  # no peer known yet: bridge only
        net.fallback_addr = ""
        with pytest.raises(ExecError) as e:
            await net.attach_task(task_on("t2", (ING, "10.0.0.3/24")), "ns-t2", Path("/y"))
        assert e.value.temporary

        # a state arriving while a task waits for it is used at once
        net2, _, rec2 = make_host(monkeypatch, wait_s=5.0)
        waiting = asyncio.create_task(net2.attach_task(task_on("t1", (APP, "10.0.1.2/24")), "ns", Path("/z")))
        await asyncio.sleep(0)
        net2.submit(state())
        await asyncio.wait_for(waiting, 2.0)
        assert all(c[4] == "192.168.5.1" for c in rec2.named("ensure_network"))
        await net2.close()
    asyncio.run(scenario())


# --------------------------------------------------------------------------------- the agent
def test_agent_hands_network_state_over_and_skips_unknown_frames(tmp_path: Path) -> None:
    async def scenario() -> None:
        got: asyncio.Queue[NetworkState] = asyncio.Queue()
        agent = Agent(FakeExecutor(), node_id="node1", state_dir=tmp_path,
                      description=NodeDescription(hostname="h"), clock=SystemClock(),
                      on_network_state=got.put_nowait)
        import socket
        a, m = socket.socketpair()
        reader, writer = await asyncio.open_connection(sock=a)
        m_reader, m_writer = await asyncio.open_connection(sock=m)
        session = asyncio.create_task(agent.run_session(reader, writer))
        first = await asyncio.wait_for(proto.read_message(m_reader), 5)
        assert isinstance(first, proto.Register)
        await proto.write_message(m_writer, proto.Registered(node_id="node1", heartbeat_period_ns=10**9))
        body = b"\x81\xa4type\xa9from_2099"  # a msgpack map with an unknown tag
        m_writer.write(len(body).to_bytes(4, "big") + body)
        await proto.write_message(m_writer, state())
        assert (await asyncio.wait_for(got.get(), 5)) == NetworkState(node_addr="")  # assumed
        assert (await asyncio.wait_for(got.get(), 5)) == state()
        assert not session.done()
        await agent.stop(shutdown_tasks=False)
        await asyncio.wait_for(session, 5)
        m_writer.close()
    asyncio.run(scenario())


def test_the_assumed_empty_view_yields_to_a_real_one(monkeypatch: pytest.MonkeyPatch) -> None:
    async def scenario() -> None:
        monkeypatch.setattr(hostmod, "ASSUMED_DELAY_S", 0.05)
        net, dns, rec = make_host(monkeypatch)
        await net.attach_task(task_on("t1", (APP, "10.0.1.2/24")), "ns-t1", Path("/x"))
        await net.apply(state())
        applied: list[NetworkState] = []
        real_apply = net.apply

        async def apply(s: NetworkState) -> None:
            applied.append(s)
            await real_apply(s)
        monkeypatch.setattr(net, "apply", apply)
        net.submit(NetworkState(node_addr=""))
        net.submit(state())  # the real view follows at once: the empty one is never applied
        async with asyncio.timeout(5):
            while not applied:
                await asyncio.sleep(0.01)
        assert applied == [state()]
        net.submit(NetworkState(node_addr=""))  # nothing follows: applied after the delay
        async with asyncio.timeout(5):
            while len(applied) < 2:
                await asyncio.sleep(0.01)
        assert applied[1] == NetworkState(node_addr="")
        assert dns.records.lookup({"n-app"}, "web").nxdomain
        assert [c[1] for c in rec.named("remove_network")] == [4096]  # app is used by t1: kept
        await net.close()
    asyncio.run(scenario())

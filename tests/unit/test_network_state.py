"""Each node's network view: `network_state_for` over a real SqliteStore(":memory:"), nodes'
ingress addresses from the allocator, and the dispatcher sending NetworkState over a socket pair."""

from __future__ import annotations

import asyncio
import ipaddress
import socket
from collections.abc import Callable, Coroutine
from typing import Any

import msgspec
import pytest

from shoal.api.clock import SystemClock
from shoal.api.ipam import make_network, new_ingress
from shoal.api.protocol import (
    Assignments,
    Message,
    NetworkState,
    Register,
    Registered,
    TaskEndpoint,
    read_message,
    write_message,
)
from shoal.api.states import TaskState
from shoal.api.types import (
    Endpoint,
    EndpointSpec,
    Meta,
    NetworkAttachment,
    NetworkAttachmentConfig,
    NetworkSpec,
    Node,
    NodeDescription,
    NodeStatus,
    PortConfig,
    Service,
    ServiceSpec,
    Task,
    TaskSpec,
    TaskStatus,
    VirtualIP,
)
from shoal.manager.allocator import Allocator
from shoal.manager.dispatcher.dispatcher import Dispatcher
from shoal.manager.dispatcher.netstate import network_state_for
from shoal.manager.netalloc.nodes import ingress_address
from shoal.store.protocol import ReadTx, WriteTx
from shoal.store.sqlite import SqliteStore

DEADLINE_S = 5.0
INGRESS = new_ingress(["10.0.0.0/8"], 24, [], network_id="ing")  # 10.0.0.0/24, gateway 10.0.0.1
FRONT = make_network(NetworkSpec(name="front"), subnet=ipaddress.IPv4Network("10.0.1.0/24"),
                     gateway=None, vni=4098, network_id="front")
PORTS = [PortConfig(protocol="tcp", target_port=80, published_port=8080, publish_mode="ingress")]


def run(scenario: Callable[[], Coroutine[Any, Any, None]]) -> None:
    asyncio.run(scenario())


def node(nid: str, addr: str, *, state: str = "ready", ingress_addr: str = "") -> Node:
    atts = [NetworkAttachment(network=INGRESS, addresses=[f"{ingress_addr}/24"])] if ingress_addr else None
    return Node(id=nid, status=NodeStatus(state=state, addr=addr), attachments=atts)


def service(sid: str, *, ports: list[PortConfig] | None = None, mode: str = "vip",
            vips: dict[str, str] | None = None) -> Service:
    spec = ServiceSpec(name=sid, task_template=TaskSpec(networks=[
        NetworkAttachmentConfig(target="front", aliases=[f"{sid}-alias"])]),
        endpoint_spec=EndpointSpec(mode=mode, ports=ports))
    virtual = [VirtualIP(network_id=n, addr=a) for n, a in (vips or {}).items()]
    return Service(id=sid, spec=spec, endpoint=Endpoint(spec=spec.endpoint_spec, ports=ports,
                                                        virtual_ips=virtual or None))


def task(tid: str, sid: str, nid: str, addrs: dict[str, str], *, state: TaskState = TaskState.RUNNING,
         desired: TaskState = TaskState.RUNNING) -> Task:
    nets = {"ing": INGRESS, "front": FRONT}
    atts = [NetworkAttachment(network=nets[n], addresses=[f"{a}/24"],
                              aliases=[f"{sid}-alias"] if n == "front" else None)
            for n, a in addrs.items()]
    return Task(id=tid, service_id=sid, node_id=nid, slot=1, status=TaskStatus(state=state),
                desired_state=desired, networks_attachments=atts)


async def seeded(*objs: Meta) -> SqliteStore:
    store = SqliteStore(":memory:")
    await store.open()

    def seed(tx: WriteTx) -> None:
        for obj in objs:
            tx.create(obj)

    await store.update(seed)
    return store


NODES = [node("n1", "192.168.0.1", ingress_addr="10.0.0.254"),
         node("n2", "192.168.0.2", ingress_addr="10.0.0.253"),
         node("n3", "192.168.0.3", ingress_addr="10.0.0.252"),
         node("n4", "192.168.0.4", state="down", ingress_addr="10.0.0.251")]
WEB = service("web", ports=PORTS, vips={"front": "10.0.1.2/24", "ing": "10.0.0.2/24"})
DB = service("db", mode="dnsrr")
TASKS = [task("w1", "web", "n1", {"front": "10.0.1.3", "ing": "10.0.0.3"}),
         task("w2", "web", "n2", {"front": "10.0.1.4", "ing": "10.0.0.4"}, desired=TaskState.SHUTDOWN),
         task("d1", "db", "n2", {"front": "10.0.1.5"}, state=TaskState.STARTING),
         task("gone", "db", "n3", {"front": "10.0.1.6"}, state=TaskState.FAILED)]


def states(objs: list[Meta]) -> dict[str, NetworkState]:
    async def compute() -> dict[str, NetworkState]:
        store = await seeded(*objs)
        view = store.view()
        out = {n: network_state_for(n, view) for n in ("n1", "n2", "n3", "n4")}
        await store.close()
        return out
    return asyncio.run(compute())


def test_networks_only_where_tasks_run_without_published_ports() -> None:
    plain = [task("w1", "web", "n1", {"front": "10.0.1.3"}), *TASKS[1:]]
    got = states([INGRESS, FRONT, *NODES, service("web"), DB, *plain])
    assert [n.network_id for n in got["n1"].networks] == ["front"]
    assert got["n3"] == NetworkState(node_addr="192.168.0.3")  # its only task failed
    assert got["n1"].ingress_addr == "" and got["n1"].ingress_hosts == []
    assert got["n1"].peers == {"front": ["192.168.0.2"]}


def test_ingress_everywhere_when_a_port_is_published() -> None:
    got = states([INGRESS, FRONT, *NODES, WEB, DB, *TASKS])
    assert [n.network_id for n in got["n3"].networks] == ["ing"]
    assert got["n3"].networks[0].ingress and got["n3"].networks[0].gateway == "10.0.0.1"
    assert [n.network_id for n in got["n1"].networks] == ["front", "ing"]
    # Peers are the other ready nodes: n4 is down.
    assert got["n3"].peers == {"ing": ["192.168.0.1", "192.168.0.2"]}
    assert got["n1"].peers == {"front": ["192.168.0.2"], "ing": ["192.168.0.2", "192.168.0.3"]}
    assert [got[n].ingress_addr for n in ("n1", "n2", "n3")] == ["10.0.0.254", "10.0.0.253", "10.0.0.252"]
    hosts = ["10.0.0.254", "10.0.0.253", "10.0.0.252", "10.0.0.251"]  # by node ID, one cluster-wide order
    assert all(got[n].ingress_hosts == hosts for n in ("n1", "n2", "n3", "n4"))
    assert [(s.service_id, s.network_id) for s in got["n3"].services] == [("web", "ing")]


def test_service_endpoints_vip_dnsrr_aliases_and_serving() -> None:
    got = states([INGRESS, FRONT, *NODES, WEB, DB, *TASKS])["n1"]
    by_key = {(s.service_id, s.network_id): s for s in got.services}
    assert sorted(by_key) == [("db", "front"), ("web", "front"), ("web", "ing")]
    web = by_key[("web", "front")]
    assert (web.endpoint_mode, web.vip, web.aliases, web.name) == ("vip", "10.0.1.2", ["web-alias"], "web")
    assert [(p.published, p.target, p.mode) for p in web.ports] == [(8080, 80, "ingress")]
    assert web.tasks == [
        TaskEndpoint(task_id="w1", node_id="n1", address="10.0.1.3", aliases=["web-alias"], serving=True),
        # Desired shutdown: drained from DNS and load balancing before its container stops.
        TaskEndpoint(task_id="w2", node_id="n2", address="10.0.1.4", aliases=["web-alias"], serving=False)]
    assert by_key[("web", "ing")].vip == "10.0.0.2"
    db = by_key[("db", "front")]
    assert (db.endpoint_mode, db.vip) == ("dnsrr", "")
    assert [(t.task_id, t.serving) for t in db.tasks] == [("d1", False)]  # starting; failed one left out


def test_host_ports_list_this_nodes_tasks_of_host_mode_services_with_or_without_networks() -> None:
    host80 = PortConfig(protocol="tcp", target_port=80, published_port=8081, publish_mode="host")
    hweb = Service(id="hweb", spec=ServiceSpec(name="hweb", endpoint_spec=EndpointSpec(ports=[host80])),
                   endpoint=Endpoint(ports=[host80]))
    plain = [Task(id=f"h{i}", service_id="hweb", node_id=n, status=TaskStatus(state=st),
                  desired_state=TaskState.RUNNING)
             for i, (n, st) in enumerate([("n1", TaskState.RUNNING), ("n1", TaskState.STARTING),
                                          ("n2", TaskState.RUNNING), ("n3", TaskState.FAILED)])]
    got = states([INGRESS, FRONT, *NODES, WEB, DB, *TASKS, hweb, *plain])
    (entry,) = got["n1"].host_ports
    assert (entry.service_id, entry.name, entry.network_id, entry.vip) == ("hweb", "hweb", "", "")
    assert [(p.published, p.target, p.mode) for p in entry.ports] == [(8081, 80, "host")]
    assert [(t.task_id, t.address, t.serving) for t in entry.tasks] == [("h0", "", True), ("h1", "", False)]
    assert [t.task_id for e in got["n2"].host_ports for t in e.tasks] == ["h2"]
    assert got["n3"].host_ports == []  # its task failed
    assert got["n1"].networks and not [s for s in got["n1"].services if s.service_id == "hweb"]


def test_equal_stores_give_equal_states_whatever_the_order() -> None:
    objs: list[Meta] = [INGRESS, FRONT, *NODES, WEB, DB, *TASKS]
    assert states(objs) == states(list(reversed(objs)))


# ------------------------------------------------------------------------ nodes' ingress addresses
async def until(store: SqliteStore, predicate: Callable[[ReadTx], bool]) -> None:
    watch = store.watch()
    try:
        async def wait() -> None:
            if predicate(store.view()):
                return
            async for _ in watch:
                if predicate(store.view()):
                    return
        await asyncio.wait_for(wait(), DEADLINE_S)
    finally:
        watch.close()


def addresses(tx: ReadTx) -> dict[str, str]:
    return {n.id: str(a) for n in tx.list(Node) if (a := ingress_address(n, "ing")) is not None}


def test_allocator_gives_each_node_a_distinct_stable_ingress_address() -> None:
    async def scenario() -> None:
        web = service("web", ports=PORTS, vips={"ing": "10.0.0.254/24"})  # a VIP nodes must avoid
        store = await seeded(INGRESS, FRONT, web, Node(id="a"), node("b", "x", state="down"))
        allocator = Allocator(store, SystemClock())
        await allocator.start()
        await until(store, lambda tx: len(addresses(tx)) == 2)
        assert addresses(store.view()) == {"a": "10.0.0.253", "b": "10.0.0.252"}
        await store.update(lambda tx: tx.create(Node(id="c")))
        new = Task(id="t", service_id="web", desired_state=TaskState.RUNNING, spec=web.spec.task_template)
        await store.update(lambda tx: tx.create(new))
        await until(store, lambda tx: len(addresses(tx)) == 3 and (t := tx.get(Task, "t")) is not None
                    and t.status.state == TaskState.PENDING)
        assert addresses(store.view())["c"] == "10.0.0.251"
        allocated = store.view().get(Task, "t")
        assert allocated is not None and allocated.networks_attachments is not None
        ing = [a for a in allocated.networks_attachments if a.network.id == "ing"]
        assert ing[0].addresses == ["10.0.0.2/24"]  # tasks take the lowest: never the gateway or a node's
        await allocator.stop()
        # Reconstructed from the store: nothing moves; a removed node's address is freed.
        again = Allocator(store, SystemClock())
        await again.start()
        await store.update(lambda tx: tx.delete(Node, "b"))
        await store.update(lambda tx: tx.create(Node(id="d")))
        await until(store, lambda tx: "d" in addresses(tx))
        assert addresses(store.view()) == {"a": "10.0.0.253", "c": "10.0.0.251", "d": "10.0.0.252"}
        await again.stop()
        await store.close()
    run(scenario)


# ---------------------------------------------------------------------------------- the session
async def recv(reader: asyncio.StreamReader) -> Message:
    return await asyncio.wait_for(read_message(reader), DEADLINE_S)


def _set_status(tid: str, state: TaskState, message: str = "") -> Callable[[WriteTx], None]:
    def update(tx: WriteTx) -> None:
        current = tx.get(Task, tid)
        assert current is not None
        tx.update(msgspec.structs.replace(current, status=TaskStatus(state=state, message=message)))
    return update


@pytest.mark.parametrize("unrelated_first", [False, True])
def test_dispatcher_sends_network_state_after_assignments_and_on_change(unrelated_first: bool) -> None:
    async def scenario() -> None:
        mine = task("w1", "web", "n1", {"front": "10.0.1.3"}, state=TaskState.ASSIGNED)
        other = task("w2", "web", "n2", {"front": "10.0.1.4"}, state=TaskState.STARTING)
        web = service("web", vips={"front": "10.0.1.2/24"})
        store = await seeded(INGRESS, FRONT, *NODES, web, mine, other)
        dispatcher = Dispatcher(store, SystemClock(), batch_s=0.005, netstate_debounce_s=0.01)
        await dispatcher.start()
        manager_sock, agent_sock = socket.socketpair()
        m_reader, m_writer = await asyncio.open_connection(sock=manager_sock)
        served = asyncio.create_task(dispatcher.serve(m_reader, m_writer))
        reader, writer = await asyncio.open_connection(sock=agent_sock)
        await write_message(writer, Register(node_id="n1", description=NodeDescription(), addr="192.168.0.1"))
        assert isinstance(await recv(reader), Registered)
        full = await recv(reader)
        assert isinstance(full, Assignments) and [t.id for t in full.tasks] == ["w1"]
        first = await recv(reader)
        assert isinstance(first, NetworkState) and first.node_addr == "192.168.0.1"
        assert [n.network_id for n in first.networks] == ["front"]
        assert [(t.task_id, t.serving) for t in first.services[0].tasks] == [("w1", False), ("w2", False)]
        if unrelated_first:  # a change that alters no view sends nothing
            await store.update(_set_status("w2", TaskState.STARTING, "still starting"))
            dispatcher.refresh_network_states()
        await store.update(_set_status("w2", TaskState.RUNNING))
        second = await recv(reader)
        assert isinstance(second, NetworkState)
        assert [(t.task_id, t.serving) for t in second.services[0].tasks] == [("w1", False), ("w2", True)]
        writer.close()
        await asyncio.wait_for(served, DEADLINE_S)
        await dispatcher.stop()
        await store.close()
    run(scenario)

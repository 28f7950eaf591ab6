"""Overlay IPAM: pools carved into subnets, VNIs, task addresses (exhaustion, freeing,
reconstruction from the store) and the allocator component over a real store."""

from __future__ import annotations

import asyncio
import ipaddress

import pytest

from shoal.api.clock import SystemClock
from shoal.api.errors import InvalidArgument
from shoal.api.ipam import (
    FIRST_VNI,
    PoolExhausted,
    carve_subnet,
    free_address,
    free_port,
    free_vni,
    holds_addresses,
    make_network,
    new_ingress,
    subnet_of,
    validate_pools,
    vni_of,
)
from shoal.api.states import TaskState
from shoal.api.types import (
    ContainerSpec,
    Endpoint,
    EndpointSpec,
    NetworkAttachmentConfig,
    NetworkSpec,
    PortConfig,
    Service,
    ServiceSpec,
    Task,
    TaskSpec,
    TaskStatus,
    VirtualIP,
)
from shoal.api.validation import validate_endpoint
from shoal.manager.allocator import Allocator
from shoal.manager.netalloc.tasks import AllocationError, TaskAddresses, attach
from shoal.store.protocol import ReadTx, WriteTx
from shoal.store.sqlite import SqliteStore

N = ipaddress.IPv4Network


@pytest.mark.parametrize(("pools", "size", "taken", "expected"), [
    (["10.0.0.0/8"], 24, [], "10.0.0.0/24"),
    (["10.0.0.0/8"], 24, ["10.0.0.0/24", "10.0.1.0/24"], "10.0.2.0/24"),
    (["10.0.0.0/8"], 24, ["10.0.0.0/16"], "10.1.0.0/24"),  # a wide route is skipped in one step
    (["10.0.0.0/8"], 26, ["10.0.0.0/26"], "10.0.0.64/26"),
    (["10.0.0.0/24", "192.168.0.0/16"], 24, ["10.0.0.0/24"], "192.168.0.0/24"),
    (["10.5.0.0/16"], 24, ["10.5.0.128/25"], "10.5.1.0/24"),
])
def test_carve_subnet(pools: list[str], size: int, taken: list[str], expected: str) -> None:
    assert carve_subnet(pools, size, [N(t) for t in taken]) == N(expected)


def test_carve_subnet_reports_an_exhausted_pool() -> None:
    with pytest.raises(PoolExhausted):
        carve_subnet(["10.9.0.0/23"], 24, [N("10.9.0.0/24"), N("10.9.1.0/24")])


@pytest.mark.parametrize(("pools", "size", "routes", "error"), [
    (["nope"], 24, [], "not a CIDR"),
    (["10.1.0.0/16"], 8, [], "invalid subnet size 8"),
    (["10.1.0.0/16"], 30, [], "invalid subnet size 30"),
    (["10.1.0.0/16"], 24, ["10.1.7.0/24"], "overlaps the route to 10.1.7.0/24"),
    (["10.1.0.0/16", "10.1.2.0/24"], 24, [], "pools overlap"),
])
def test_validate_pools_refuses(pools: list[str], size: int, routes: list[str], error: str) -> None:
    with pytest.raises(InvalidArgument, match=error):
        validate_pools(pools, size, [N(r) for r in routes])


def test_validate_pools_defaults() -> None:
    assert validate_pools([], 0, []) == (["10.0.0.0/8"], 24)
    assert validate_pools(["10.20.0.0/16"], 26, [N("192.0.2.0/24")]) == (["10.20.0.0/16"], 26)


def test_vnis_and_addresses_and_ports() -> None:
    assert free_vni([]) == FIRST_VNI
    assert free_vni([4097, 4098, 4100]) == 4099
    sub = N("10.0.1.0/29")
    used = {ipaddress.IPv4Address("10.0.1.1"), ipaddress.IPv4Address("10.0.1.2")}
    assert str(free_address(sub, used)) == "10.0.1.3"
    assert free_address(sub, {*sub.hosts()}) is None
    assert free_port(set()) == 30000
    assert free_port({30000, 30001}) == 30002
    with pytest.raises(PoolExhausted):
        free_port(set(range(30000, 32768)))


def test_ingress_and_network_objects() -> None:
    ingress = new_ingress(["10.0.0.0/8"], 24, [N("10.0.0.0/24")])
    assert ingress.spec.ingress and subnet_of(ingress) == N("10.0.1.0/24")
    assert vni_of(ingress) == FIRST_VNI
    assert ingress.ipam_options is not None and ingress.ipam_options.configs is not None
    assert ingress.ipam_options.configs[0].gateway == "10.0.1.1"


@pytest.mark.parametrize(("ep", "error"), [
    (EndpointSpec(mode="dnsrr", ports=[PortConfig(target_port=80, published_port=8080)]),
     "port published with ingress mode can't be used with dnsrr mode"),
    (EndpointSpec(ports=[PortConfig(target_port=0)]), "invalid target port 0"),
    (EndpointSpec(ports=[PortConfig(target_port=80, published_port=70000)]), "invalid published port"),
    (EndpointSpec(ports=[PortConfig(target_port=80, protocol="icmp")]), "invalid protocol 'icmp'"),
    (EndpointSpec(ports=[PortConfig(target_port=80, publish_mode="mesh")]), "invalid publish mode"),
    (EndpointSpec(mode="rr"), "invalid resolution mode"),
    (EndpointSpec(ports=[PortConfig(target_port=80, published_port=8080),
                         PortConfig(target_port=81, published_port=8080)]), "duplicate published ports"),
])
def test_validate_endpoint_refuses(ep: EndpointSpec, error: str) -> None:
    with pytest.raises(InvalidArgument, match=error):
        validate_endpoint(ep)


def test_validate_endpoint_accepts_dnsrr_with_host_ports() -> None:
    validate_endpoint(EndpointSpec(mode="dnsrr", ports=[PortConfig(target_port=80, published_port=80,
                                                                    publish_mode="host")]))


# ------------------------------------------------------------------------- task addresses
NET = make_network(NetworkSpec(name="back"), subnet=N("10.7.0.0/29"), gateway=None, vni=4098,
                   network_id="net1")


def service(vips: list[str] | None = None, ports: list[PortConfig] | None = None) -> Service:
    spec = ServiceSpec(name="web", task_template=TaskSpec(
        container_spec=ContainerSpec(image="busybox"), networks=[NetworkAttachmentConfig(target="net1")]))
    vip = [VirtualIP(network_id="net1", addr=a) for a in vips or ()]
    return Service(id="svc", spec=spec, endpoint=Endpoint(ports=ports, virtual_ips=vip or None))


def new_task(tid: str) -> Task:
    return Task(id=tid, service_id="svc", slot=1, desired_state=TaskState.RUNNING,
                spec=TaskSpec(container_spec=ContainerSpec(image="busybox"),
                              networks=[NetworkAttachmentConfig(target="net1", aliases=["web"])]))


async def seeded(*objs: object) -> SqliteStore:
    store = SqliteStore(":memory:")
    await store.open()

    def seed(tx: WriteTx) -> None:
        for obj in objs:
            tx.create(obj)  # type: ignore[type-var]
    await store.update(seed)
    return store


def test_attach_skips_gateway_and_vips_then_exhausts() -> None:
    async def scenario() -> None:
        store = await seeded(NET, service(vips=["10.7.0.2/29"]))
        held = TaskAddresses()
        view = store.view()
        got = [attach(view, new_task(f"t{i}"), held) for i in range(4)]
        addrs = [t.networks_attachments[0].addresses for t in got if t.networks_attachments]
        assert addrs == [["10.7.0.3/29"], ["10.7.0.4/29"], ["10.7.0.5/29"], ["10.7.0.6/29"]]
        assert got[0].networks_attachments and got[0].networks_attachments[0].aliases == ["web"]
        assert got[0].networks_attachments[0].network.id == "net1"
        with pytest.raises(AllocationError, match="could not allocate IP address on network back: "
                           "address pool exhausted"):
            attach(view, new_task("t4"), held)
        assert held.release(got[1])
        again = attach(view, new_task("t5"), held)
        assert again.networks_attachments and again.networks_attachments[0].addresses == ["10.7.0.4/29"]
    asyncio.run(scenario())


def test_ingress_is_added_for_ingress_published_ports() -> None:
    async def scenario() -> None:
        ingress = new_ingress(["10.0.0.0/8"], 24, [], network_id="ing")
        ports = [PortConfig(protocol="tcp", target_port=80, published_port=8080, publish_mode="ingress")]
        store = await seeded(NET, ingress, service(ports=ports))
        got = attach(store.view(), new_task("t0"), TaskAddresses())
        assert [a.network.id for a in got.networks_attachments or ()] == ["net1", "ing"]
    asyncio.run(scenario())


def test_held_addresses_are_rebuilt_from_tasks_and_dead_tasks_hold_none() -> None:
    held = TaskAddresses()
    first = attach_offline(new_task("a"))
    dead = Task(id="d", desired_state=TaskState.SHUTDOWN, status=TaskStatus(state=TaskState.FAILED),
                networks_attachments=first.networks_attachments)
    assert not holds_addresses(dead) and holds_addresses(first)
    held.load([first])
    assert {str(a) for a in held.held("net1")} == {"10.7.0.2"}
    held.load([dead])
    assert held.held("net1") == set()


def attach_offline(task: Task) -> Task:
    async def go() -> Task:
        store = await seeded(NET, service())
        return attach(store.view(), task, TaskAddresses())
    return asyncio.run(go())


def test_allocator_reports_exhaustion_on_the_task_and_retries_when_freed() -> None:
    def states(tx: ReadTx) -> dict[str, Task]:
        return {t.id: t for t in tx.list(Task)}

    async def until(store: SqliteStore, ok: object) -> None:
        watch = store.watch()
        try:
            if not ok(store.view()):  # type: ignore[operator]
                async for _ in watch:
                    if ok(store.view()):  # type: ignore[operator]
                        return
        finally:
            watch.close()

    async def scenario() -> None:
        store = await seeded(NET, service(), *[new_task(f"t{i}") for i in range(6)])
        allocator = Allocator(store, SystemClock())
        await allocator.start()
        try:
            def five_and_one(tx: ReadTx) -> bool:
                ts = states(tx).values()
                pending = sum(t.status.state == TaskState.PENDING for t in ts)
                return pending == 5 and any(t.status.err for t in ts)
            await asyncio.wait_for(until(store, five_and_one), 5)
            waiting = next(t for t in states(store.view()).values() if t.status.err)
            assert waiting.status.state == TaskState.NEW
            assert waiting.status.err == ("could not allocate IP address on network back: "
                                          "address pool exhausted")
            victim = next(t for t in states(store.view()).values() if t.status.state == TaskState.PENDING)
            await store.update(lambda tx: tx.delete(Task, victim.id))
            await asyncio.wait_for(until(store, lambda tx: states(tx)[waiting.id].status.state
                                         == TaskState.PENDING), 5)
            got = states(store.view())[waiting.id]
            assert got.networks_attachments and got.networks_attachments[0].addresses == \
                victim.networks_attachments[0].addresses  # type: ignore[index]
        finally:
            await allocator.stop()
    asyncio.run(scenario())

"""A service's networks and Endpoint, decided inside the create/update transaction.

Called by services.py. Network targets (names or IDs; the CLI sends IDs, `stack deploy` names) are
resolved to IDs before the spec is stored, so the orchestrator's TaskSpec comparison sees a
network change and the allocator reads IDs. The Endpoint gets its ports (ingress ports are
cluster-wide: a free one of 30000-32767 when none is given, a taken one refused) and one VIP per
network in vip mode. Everything is derived from the store inside the transaction (shoal/api/ipam.py);
the allocator gives task addresses in its own transactions and skips these VIPs.
"""

from __future__ import annotations

import msgspec

from shoal.api.errors import FailedPrecondition, InvalidArgument
from shoal.api.ipam import (
    PoolExhausted,
    address_of,
    find_ingress,
    free_address,
    free_port,
    gateway_of,
    ingress_ports,
    subnet_of,
    task_addresses_on,
    vips_on,
    with_prefix,
)
from shoal.api.types import (
    Endpoint,
    EndpointSpec,
    Network,
    PortConfig,
    Service,
    ServiceSpec,
    Task,
    VirtualIP,
)
from shoal.apiserver.docker.lookup import resolve
from shoal.store.protocol import ReadTx

_INVALID = "rpc error: code = InvalidArgument desc = "


def resolve_network(tx: ReadTx, ref: str) -> Network:
    return resolve(tx, Network, ref, "network")


def with_network_ids(tx: ReadTx, spec: ServiceSpec) -> ServiceSpec:
    """The spec with every TaskTemplate.Networks target replaced by its network's ID."""
    template = spec.task_template
    if not template.networks:
        return spec
    out, seen = [], set()
    for att in template.networks:
        net = resolve_network(tx, att.target)
        if net.spec.ingress:
            raise InvalidArgument(_INVALID + "Service cannot be explicitly attached to the ingress "
                                  f'network "{net.spec.name}"')
        if net.id in seen:
            raise InvalidArgument(_INVALID + f"duplicate network target {att.target}")
        seen.add(net.id)
        out.append(msgspec.structs.replace(att, target=net.id))
    return msgspec.structs.replace(spec, task_template=msgspec.structs.replace(template, networks=out))


def allocate_endpoint(tx: ReadTx, service_id: str, spec: ServiceSpec, previous: Endpoint | None) -> Endpoint:
    """The Endpoint of `spec`: allocated ports, and VIPs (kept from `previous` where they still apply)."""
    ep_spec = spec.endpoint_spec
    others = [s for s in tx.list(Service) if s.id != service_id]
    ports = _allocate_ports(ep_spec, previous, others)
    net_ids = [n.target for n in spec.task_template.networks or ()]
    if ingress_ports(ports):
        ingress = find_ingress(tx.list(Network))
        if ingress is None:
            raise FailedPrecondition("rpc error: code = FailedPrecondition desc = service needs "
                                     "ingress network, but no ingress network is present")
        net_ids.append(ingress.id)
    vips: list[VirtualIP] = []
    if ep_spec is None or ep_spec.mode != "dnsrr":
        vips = _allocate_vips(tx, net_ids, previous, others)
    return Endpoint(spec=ep_spec, ports=ports or None, virtual_ips=vips or None)


def _normal(port: PortConfig) -> PortConfig:
    return msgspec.structs.replace(port, protocol=port.protocol or "tcp",
                                   publish_mode=port.publish_mode or "ingress")


def _taken_ports(others: list[Service]) -> dict[tuple[str, int], Service]:
    taken: dict[tuple[str, int], Service] = {}
    for svc in others:
        for port in ingress_ports(svc.endpoint.ports if svc.endpoint is not None else None):
            taken[(port.protocol or "tcp", port.published_port)] = svc
    return taken


def _allocate_ports(ep_spec: EndpointSpec | None, previous: Endpoint | None,
                    others: list[Service]) -> list[PortConfig]:
    taken = _taken_ports(others)
    before = {(p.protocol, p.target_port): p.published_port
              for p in ingress_ports(previous.ports if previous is not None else None)}
    wanted = [_normal(p) for p in (ep_spec.ports if ep_spec is not None else None) or ()]
    mine = {(p.protocol, p.published_port) for p in wanted
            if p.publish_mode == "ingress" and p.published_port}
    out: list[PortConfig] = []
    for port in wanted:
        if port.publish_mode != "ingress":
            out.append(port)
            continue
        published = port.published_port
        if not published:
            kept = before.get((port.protocol, port.target_port), 0)
            free = kept and (port.protocol, kept) not in taken and (port.protocol, kept) not in mine
            published = kept if free else _free_port(port.protocol, taken, mine)
            mine.add((port.protocol, published))
        owner = taken.get((port.protocol, published))
        if owner is not None:
            raise InvalidArgument(_INVALID + f"port '{published}' is already in use by service "
                                  f"'{owner.spec.name}' ({owner.id}) as an ingress port")
        out.append(msgspec.structs.replace(port, published_port=published))
    return out


def _free_port(protocol: str, taken: dict[tuple[str, int], Service], mine: set[tuple[str, int]]) -> int:
    used = {p for proto, p in taken if proto == protocol} | {p for proto, p in mine if proto == protocol}
    try:
        return free_port(used)
    except PoolExhausted as e:
        raise InvalidArgument(_INVALID + str(e)) from None


def _allocate_vips(tx: ReadTx, net_ids: list[str], previous: Endpoint | None,
                   others: list[Service]) -> list[VirtualIP]:
    kept = {v.network_id: v for v in (previous.virtual_ips if previous is not None else None) or ()}
    tasks: list[Task] | None = None
    out: list[VirtualIP] = []
    for net_id in net_ids:
        if net_id in kept:
            out.append(kept[net_id])
            continue
        network = tx.get(Network, net_id)
        subnet = subnet_of(network) if network is not None else None
        if network is None or subnet is None:
            raise InvalidArgument(_INVALID + f"network {net_id} has no address space")
        if tasks is None:
            tasks = list(tx.list(Task))
        used = vips_on(others, net_id) | task_addresses_on(tasks, net_id)
        used |= {a for a in (address_of(v.addr) for v in out if v.network_id == net_id) if a}
        gateway = gateway_of(network)
        if gateway is not None:
            used.add(gateway)
        addr = free_address(subnet, used)
        if addr is None:
            raise InvalidArgument(_INVALID + "could not allocate a virtual IP on network "
                                  f"{network.spec.name}: address pool exhausted")
        out.append(VirtualIP(network_id=net_id, addr=with_prefix(addr, subnet)))
    return out

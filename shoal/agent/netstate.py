"""What a host's overlay data path should look like, computed from the manager's NetworkState.

Pure functions, no side effects: agent/network/host.py (`HostNetwork`) applies what they return.

- `dns_records(state)`: the embedded resolver's table, rebuilt from scratch on every state (the
  state is the whole view, so a rebuild is simpler and never leaves a stale name behind): each
  service on each network (its VIP, endpoint mode and aliases) and each of its tasks (address,
  `serving` as running, aliases).
- `vip_table(state, networks)`: the VIP load-balancing table of one local task attached to
  `networks`: every vip-mode service with a VIP on those networks, all ports and protocols
  (`port=None`), backends = the addresses of its serving tasks (sorted, so the table only
  changes when the set does). dnsrr services get no VIP.
- `ingress_plan(state)`: the routing mesh of this host: ingress-mode published ports of services
  on the ingress network and, per published port, the ingress addresses of the serving tasks.
- `LocalAttachment` / `attachments_of(task)`: a task's overlay networks in a stable order
  (network id), with the interface each gets in the task (`eth1`, `eth2`, … after the host
  bridge's `eth0`), taken from `Task.NetworksAttachments` (VNI, subnet and gateway are all there,
  so a task can be attached before the network appears in a NetworkState).
"""

from __future__ import annotations

import ipaddress
from collections.abc import Iterable
from dataclasses import dataclass

from shoal.agent.network.dnsrecords import DnsRecords, EndpointMode
from shoal.agent.network.lb import VipService
from shoal.agent.network.mesh import PublishedPort
from shoal.api import ipam
from shoal.api.protocol import NetworkState, OverlayNetwork, ServiceEndpoints
from shoal.api.types import Task


@dataclass(frozen=True)
class LocalAttachment:
    """One overlay network of a local task: where and how it is attached."""

    network_id: str
    vni: int
    subnet: str  # "10.0.1.0/24"
    address_cidr: str  # the task's address with the subnet's prefix length
    ifname: str  # eth1, eth2, … in the task's netns
    ingress: bool
    aliases: tuple[str, ...] = ()

    @property
    def address(self) -> str:
        return str(ipaddress.IPv4Interface(self.address_cidr).ip)


def attachments_of(task: Task) -> list[LocalAttachment]:
    """The task's overlay attachments sorted by network id, as eth1, eth2, …; entries without a
    VNI, subnet or address (not allocated) are skipped."""
    found = []
    for att in task.networks_attachments or ():
        vni, subnet = ipam.vni_of(att.network), ipam.subnet_of(att.network)
        addresses = [a for a in att.addresses or () if a]
        if not att.network.id or not vni or subnet is None or not addresses:
            continue
        iface = ipaddress.IPv4Interface(addresses[0])
        cidr = f"{iface.ip}/{subnet.prefixlen}"
        found.append((att.network.id, vni, str(subnet), cidr, bool(att.network.spec.ingress),
                      tuple(att.aliases or ())))
    found.sort(key=lambda f: f[0])
    return [LocalAttachment(nid, vni, subnet, cidr, f"eth{i}", ingress, aliases)
            for i, (nid, vni, subnet, cidr, ingress, aliases) in enumerate(found, 1)]


def network_of(att: LocalAttachment) -> OverlayNetwork:
    """An OverlayNetwork for an attachment whose network the state does not list (yet)."""
    net = ipaddress.IPv4Network(att.subnet)
    return OverlayNetwork(network_id=att.network_id, name="", vni=att.vni, subnet=att.subnet,
                          gateway=str(next(net.hosts())), ingress=att.ingress)


def ingress_network(state: NetworkState) -> OverlayNetwork | None:
    return next((n for n in state.networks if n.ingress), None)


def serving_addresses(svc: ServiceEndpoints) -> list[str]:
    """Addresses of the service's serving tasks on its network, sorted numerically."""
    return sorted({t.address for t in svc.tasks if t.serving and t.address},
                  key=ipaddress.IPv4Address)


def dns_records(state: NetworkState) -> DnsRecords:
    """The resolver's table for `state` (see the module docstring)."""
    records = DnsRecords()
    for svc in state.services:
        mode: EndpointMode = "dnsrr" if svc.endpoint_mode == "dnsrr" else "vip"
        records.set_service(svc.network_id, svc.name, vip=svc.vip or None, endpoint_mode=mode,
                            aliases=svc.aliases)
        for task in svc.tasks:
            if task.address:
                records.set_task(svc.network_id, svc.name, task.task_id, task.address,
                                 task.serving, task.aliases)
    return records


def vip_table(state: NetworkState, networks: Iterable[str]) -> list[VipService]:
    """The VIPs a task attached to `networks` load-balances (see the module docstring)."""
    wanted = set(networks)
    table = []
    for svc in sorted(state.services, key=lambda s: (s.network_id, s.service_id)):
        if svc.network_id in wanted and svc.endpoint_mode != "dnsrr" and svc.vip:
            table.append(VipService(vip=svc.vip, port=None, backends=tuple(serving_addresses(svc))))
    return table


@dataclass(frozen=True)
class IngressPlan:
    """The routing mesh of one host: published ports and their backends (ingress addresses)."""

    network: OverlayNetwork
    ports: tuple[PublishedPort, ...]
    backends: dict[int, list[str]]


def ingress_plan(state: NetworkState) -> IngressPlan | None:
    """None when the state has no ingress network."""
    ingress = ingress_network(state)
    if ingress is None:
        return None
    ports: dict[tuple[int, str], PublishedPort] = {}
    backends: dict[int, list[str]] = {}
    for svc in state.services:
        if svc.network_id != ingress.network_id:
            continue
        for p in svc.ports:
            if p.mode != "ingress" or not p.published or p.protocol not in ("tcp", "udp"):
                continue
            ports[(p.published, p.protocol)] = PublishedPort(p.published, p.target, p.protocol)
            backends[p.published] = sorted(set(backends.get(p.published, [])) |
                                           set(serving_addresses(svc)), key=ipaddress.IPv4Address)
    ordered = tuple(ports[k] for k in sorted(ports))
    return IngressPlan(ingress, ordered, backends)


def ingress_udp_ports(state: NetworkState) -> dict[str, tuple[int, ...]]:
    """Task ID -> the UDP target ports it serves through the routing mesh (sorted); only tasks
    that serve some."""
    ingress = ingress_network(state)
    found: dict[str, set[int]] = {}
    for svc in state.services:
        if ingress is None or svc.network_id != ingress.network_id:
            continue
        udp = {p.target for p in svc.ports if p.mode == "ingress" and p.published and p.protocol == "udp"}
        for t in svc.tasks if udp else ():
            found.setdefault(t.task_id, set()).update(udp)
    return {task_id: tuple(sorted(ports)) for task_id, ports in found.items()}


def peers_of(state: NetworkState, network_id: str) -> set[str]:
    """The other hosts on a network (this host's own address left out, should it be listed)."""
    return set(state.peers.get(network_id, ())) - {state.node_addr}

"""Addresses of tasks on overlay networks: who holds what, and attaching a NEW task.

The allocator is the only writer of task addresses, so its `TaskAddresses` (loaded from the store
at start, updated as it commits and as tasks die or go) is authoritative for them; service VIPs are
written by the API server and read from the store inside each allocation transaction, so the two
never hand out one address twice.
"""

from __future__ import annotations

from collections.abc import Iterable

import msgspec

from shoal.api.ipam import (
    IPv4Addr,
    address_of,
    find_ingress,
    free_address,
    gateway_of,
    holds_addresses,
    ingress_ports,
    subnet_of,
    vips_on,
    with_prefix,
)
from shoal.api.types import Network, NetworkAttachment, Node, Service, Task
from shoal.store.protocol import ReadTx


class AllocationError(Exception):
    """A task cannot get its addresses now; the message goes to its Status.Err."""


NODE_OWNER = "node:"  # owners of nodes' own addresses (netalloc/nodes.py) are "node:<id>"


class TaskAddresses:
    """Per network: address -> its holder, a task ID or "node:<node ID>" (a node's own address)."""

    def __init__(self) -> None:
        self._held: dict[str, dict[IPv4Addr, str]] = {}

    def load(self, tasks: Iterable[Task], nodes: Iterable[Node] = ()) -> None:
        self._held = {}
        for task in tasks:
            if holds_addresses(task):
                self.add(task)
        for node in nodes:
            self.add_node(node)

    def add_node(self, node: Node) -> None:
        for att in node.attachments or ():
            for addr in map(address_of, att.addresses or ()):
                if addr is not None:
                    self._held.setdefault(att.network.id, {})[addr] = NODE_OWNER + node.id

    def release_node(self, node: Node) -> bool:
        """Free the node's own addresses; whether anything was freed."""
        owner, freed = NODE_OWNER + node.id, False
        for held in self._held.values():
            for addr in [a for a, o in held.items() if o == owner]:
                del held[addr]
                freed = True
        return freed

    def owner(self, network_id: str, addr: IPv4Addr) -> str | None:
        return self._held.get(network_id, {}).get(addr)

    def forget_network(self, network_id: str) -> None:
        self._held.pop(network_id, None)

    def add(self, task: Task) -> None:
        for att in task.networks_attachments or ():
            held = self._held.setdefault(att.network.id, {})
            for addr in map(address_of, att.addresses or ()):
                if addr is not None:
                    held[addr] = task.id

    def release(self, task: Task) -> bool:
        """Free what `task` holds; whether anything was freed."""
        freed = False
        for att in task.networks_attachments or ():
            held = self._held.get(att.network.id, {})
            for addr in map(address_of, att.addresses or ()):
                if addr is not None and held.get(addr) == task.id:
                    del held[addr]
                    freed = True
        return freed

    def held(self, network_id: str) -> set[IPv4Addr]:
        return set(self._held.get(network_id, {}))


def _targets(tx: ReadTx, task: Task, networks: list[Network]) -> list[tuple[Network, list[str] | None]]:
    """The networks of the task's spec, plus ingress when its service publishes an ingress port."""
    by_id = {n.id: n for n in networks}
    out: list[tuple[Network, list[str] | None]] = []
    for config in task.spec.networks or ():
        net = by_id.get(config.target)
        if net is None:
            raise AllocationError(f"network {config.target} not found")
        out.append((net, config.aliases))
    service = tx.get(Service, task.service_id)
    ingress = find_ingress(networks)
    if service is not None and service.endpoint is not None and ingress_ports(service.endpoint.ports):
        if ingress is None:
            raise AllocationError("service needs ingress network, but no ingress network is present")
        if all(n.id != ingress.id for n, _ in out):
            out.append((ingress, None))
    return out


def attach(tx: ReadTx, task: Task, held: TaskAddresses) -> Task:
    """The task with an address on each of its networks (recorded in `held`), or AllocationError."""
    networks = list(tx.list(Network))
    targets = _targets(tx, task, networks)
    if not targets:
        return task
    services = list(tx.list(Service))
    attachments: list[NetworkAttachment] = []
    for net, aliases in targets:
        subnet = subnet_of(net)
        if subnet is None:
            raise AllocationError(f"network {net.spec.name} has no address space")
        used = held.held(net.id) | vips_on(services, net.id)
        gateway = gateway_of(net)
        if gateway is not None:
            used.add(gateway)
        used.update(a for a in (address_of(x) for att in attachments if att.network.id == net.id
                                for x in att.addresses or ()) if a is not None)
        addr = free_address(subnet, used)
        if addr is None:
            raise AllocationError(f"could not allocate IP address on network {net.spec.name}: "
                                  "address pool exhausted")
        attachments.append(NetworkAttachment(network=net, addresses=[with_prefix(addr, subnet)],
                                             aliases=aliases or None))
    attached = msgspec.structs.replace(task, networks_attachments=attachments)
    held.add(attached)
    return attached

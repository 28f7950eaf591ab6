"""Nodes' own addresses on the ingress network (swarmkit's Node.Attachments), for the routing mesh.

Every node in the store (ready or not) gets one address on the ingress network, stored in
`Node.attachments` by the allocator in its transaction. Node addresses are taken from the top of
the subnet downwards (tasks and VIPs take the lowest free), never the gateway, a task's or a VIP's.
The API server allocates VIPs without looking at nodes, so should a VIP ever land on a node's
address, `settle_node` moves the node (VIPs are user-visible; a node's address is not).
"""

from __future__ import annotations

import msgspec

from shoal.api.ipam import (
    IPv4Addr,
    IPv4Net,
    address_of,
    gateway_of,
    subnet_of,
    vips_on,
    with_prefix,
)
from shoal.api.types import Network, NetworkAttachment, Node, Service
from shoal.manager.netalloc.tasks import NODE_OWNER, AllocationError, TaskAddresses
from shoal.store.protocol import ReadTx


def ingress_address(node: Node, ingress_id: str) -> IPv4Addr | None:
    """The node's address on the ingress network `ingress_id`, if it has one."""
    for att in node.attachments or ():
        if att.network.id == ingress_id:
            for addr in map(address_of, att.addresses or ()):
                if addr is not None:
                    return addr
    return None


def highest_free(subnet: IPv4Net, used: set[IPv4Addr]) -> IPv4Addr | None:
    """The highest host address of `subnet` not in `used`, or None."""
    first, last = int(subnet.network_address) + 1, int(subnet.broadcast_address) - 1
    if subnet.prefixlen >= 31:
        first, last = int(subnet.network_address), int(subnet.broadcast_address)
    for value in range(last, first - 1, -1):
        addr = IPv4Addr(value)
        if addr not in used:
            return addr
    return None


def _valid(node: Node, ingress: Network, subnet: IPv4Net, held: TaskAddresses,
           taken: set[IPv4Addr]) -> bool:
    if len(node.attachments or ()) != 1:
        return False
    addr = ingress_address(node, ingress.id)
    return (addr is not None and addr in subnet and addr not in taken
            and held.owner(ingress.id, addr) in (None, NODE_OWNER + node.id))


def settle_node(tx: ReadTx, node: Node, ingress: Network | None, held: TaskAddresses) -> Node | None:
    """The node with exactly one valid address on `ingress` (none without an ingress network),
    recorded in `held`; None when the stored node is already right. AllocationError when the
    ingress subnet is full."""
    subnet = subnet_of(ingress) if ingress is not None else None
    if ingress is None or subnet is None:
        if not node.attachments:
            return None
        held.release_node(node)
        return msgspec.structs.replace(node, attachments=None)
    taken = vips_on(tx.list(Service), ingress.id)
    gateway = gateway_of(ingress)
    if gateway is not None:
        taken.add(gateway)
    if _valid(node, ingress, subnet, held, taken):
        held.add_node(node)
        return None
    held.release_node(node)
    addr = highest_free(subnet, taken | held.held(ingress.id))
    if addr is None:
        raise AllocationError(f"could not allocate an address for node {node.id} on network "
                              f"{ingress.spec.name}: address pool exhausted")
    attachment = NetworkAttachment(network=ingress, addresses=[with_prefix(addr, subnet)])
    settled = msgspec.structs.replace(node, attachments=[attachment])
    held.add_node(settled)
    return settled

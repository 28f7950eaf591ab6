"""Each node's network view (`protocol.NetworkState`), computed purely from a store snapshot.

`network_state_for(node_id, view)` is the whole view of one node; the dispatcher builds one
`NetworkIndex` per debounce tick and asks it for every session's node (one scan of the store per
tick, not per node). Everything is sorted, so equal views compare equal.

Semantics (what the agent gets):
- node_addr: the node's Status.Addr (its underlay address; the advertise address for a manager).
- networks: every network on which a task of this node that is active (ASSIGNED..RUNNING, not
  terminal) has an address, plus ingress whenever any service publishes an ingress-mode port.
- peers[network]: Status.Addr of the other *ready* nodes on it: those with an active task on the
  network; for ingress every other ready node (all take part in the routing mesh).
- ingress_addr / ingress_hosts (only when ingress is among `networks`): this node's own ingress
  address (Node.Attachments), and every node's ingress address, ordered by node ID.
- services: per network above, every service attached to it (its spec's networks; ingress for
  services publishing ingress ports): endpoint mode, VIP on that network (none in dnsrr), the
  spec's aliases on that network, Endpoint.Ports, and its tasks that hold an address on that
  network, are on a node and are not terminal, with `serving` = running and desired running.
- host_ports: every service publishing a host-mode port with an active task on this node, on or
  off overlay networks (network_id "", no VIP, no aliases): Endpoint.Ports and this node's active
  tasks (address "", `serving` as above). The agent publishes the ports at its tasks' host bridge
  addresses (agent/network/hostports.py).
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Iterable

from shoal.api.ipam import (
    address_of,
    find_ingress,
    gateway_of,
    holds_addresses,
    ingress_ports,
    service_network_ids,
    subnet_of,
    vni_of,
)
from shoal.api.protocol import (
    NetworkState,
    OverlayNetwork,
    PublishedPortSpec,
    ServiceEndpoints,
    TaskEndpoint,
)
from shoal.api.states import TaskState
from shoal.api.types import Network, Node, PortConfig, Service, Task
from shoal.manager.netalloc.nodes import ingress_address
from shoal.store.protocol import ReadTx


def network_state_for(node_id: str, view: ReadTx) -> NetworkState:
    """The network view of `node_id` in `view` (see the module docstring)."""
    return NetworkIndex(view).state_for(node_id)


def _on_node(task: Task) -> bool:
    return bool(task.node_id) and task.status.state.active


def _addresses(task: Task) -> Iterable[tuple[str, str, list[str]]]:
    """(network ID, address without prefix, aliases) of each of the task's attachments."""
    for att in task.networks_attachments or ():
        addr = next((a for a in map(address_of, att.addresses or ()) if a is not None), None)
        if addr is not None:
            yield att.network.id, str(addr), sorted(set(att.aliases or ()))


def _overlay(net: Network) -> OverlayNetwork | None:
    subnet, gateway = subnet_of(net), gateway_of(net)
    if subnet is None:
        return None
    return OverlayNetwork(network_id=net.id, name=net.spec.name, vni=vni_of(net), subnet=str(subnet),
                          gateway=str(gateway) if gateway is not None else "",
                          ingress=net.spec.ingress, internal=net.spec.internal)


def _ports(ports: Iterable[PortConfig] | None) -> list[PublishedPortSpec]:
    out = {PublishedPortSpec(protocol=p.protocol or "tcp", target=p.target_port,
                             published=p.published_port, mode=p.publish_mode or "ingress")
           for p in ports or ()}
    return sorted(out, key=lambda p: (p.protocol, p.published, p.target, p.mode))


class NetworkIndex:
    """One scan of a snapshot: networks, nodes, services by network, task endpoints by service."""

    def __init__(self, view: ReadTx) -> None:
        self._view = view
        self.networks = {n.id: n for n in view.list(Network)}
        self.ingress = find_ingress(self.networks.values())
        self.nodes = {n.id: n for n in view.list(Node)}
        services = sorted(view.list(Service), key=lambda s: s.id)
        ingress_id = self.ingress.id if self.ingress is not None else None
        self.ingress_used = ingress_id is not None and any(
            s.endpoint is not None and ingress_ports(s.endpoint.ports) for s in services)
        self.services_on: dict[str, list[Service]] = defaultdict(list)
        self.host_mode = {s.id: s for s in services if s.endpoint is not None
                          and any(p.publish_mode == "host" for p in s.endpoint.ports or ())}
        for svc in services:
            for net_id in dict.fromkeys(service_network_ids(svc, ingress_id)):
                self.services_on[net_id].append(svc)
        self.endpoints: dict[tuple[str, str], list[TaskEndpoint]] = defaultdict(list)
        self.nodes_on: dict[str, set[str]] = defaultdict(set)
        for task in sorted(view.list(Task), key=lambda t: t.id):
            self._add_task(task)

    def _add_task(self, task: Task) -> None:
        if not task.networks_attachments or not task.node_id or not holds_addresses(task):
            return
        if task.status.state.terminal:
            return
        serving = task.status.state == TaskState.RUNNING and task.desired_state == TaskState.RUNNING
        for net_id, addr, aliases in _addresses(task):
            self.endpoints[(task.service_id, net_id)].append(TaskEndpoint(
                task_id=task.id, node_id=task.node_id, address=addr, aliases=aliases, serving=serving))
            if _on_node(task):
                self.nodes_on[net_id].add(task.node_id)

    def state_for(self, node_id: str) -> NetworkState:
        node = self.nodes.get(node_id)
        node_addr = node.status.addr if node is not None else ""
        local = [t for t in self._view.tasks_of_node(node_id) if _on_node(t)]
        net_ids = {net_id for t in local for net_id, _, _ in _addresses(t)}
        overlays = {n.id: o for n in self._attached(net_ids) if (o := _overlay(n)) is not None}
        in_ingress = self.ingress is not None and self.ingress.id in overlays
        return NetworkState(
            node_addr=node_addr,
            ingress_addr=self._ingress_addr(node) if in_ingress else "",
            networks=[overlays[k] for k in sorted(overlays)],
            peers={k: self._peers(k, node_id) for k in sorted(overlays)},
            ingress_hosts=self._ingress_hosts() if in_ingress else [],
            services=[e for k in sorted(overlays) for e in self._service_endpoints(k)],
            host_ports=self._host_ports(local))

    def _host_ports(self, local: list[Task]) -> list[ServiceEndpoints]:
        by_service: dict[str, list[TaskEndpoint]] = defaultdict(list)
        for t in sorted(local, key=lambda t: t.id):
            if t.service_id in self.host_mode:
                serving = t.status.state == TaskState.RUNNING and t.desired_state == TaskState.RUNNING
                by_service[t.service_id].append(TaskEndpoint(task_id=t.id, node_id=t.node_id,
                                                             address="", serving=serving))
        out = []
        for svc_id in sorted(by_service):
            svc = self.host_mode[svc_id]
            ports = svc.endpoint.ports if svc.endpoint is not None else None
            out.append(ServiceEndpoints(service_id=svc_id, name=svc.spec.name, network_id="",
                                        endpoint_mode="", ports=_ports(ports), tasks=by_service[svc_id]))
        return out

    def _attached(self, net_ids: set[str]) -> list[Network]:
        nets = [self.networks[n] for n in sorted(net_ids) if n in self.networks]
        if self.ingress is not None and self.ingress_used and self.ingress.id not in net_ids:
            nets.append(self.ingress)
        return nets

    def _ingress_addr(self, node: Node | None) -> str:
        addr = ingress_address(node, self.ingress.id) if node is not None and self.ingress else None
        return str(addr) if addr is not None else ""

    def _ingress_hosts(self) -> list[str]:
        return [a for _, n in sorted(self.nodes.items()) if (a := self._ingress_addr(n))]

    def _peers(self, net_id: str, node_id: str) -> list[str]:
        is_ingress = self.ingress is not None and net_id == self.ingress.id
        members = self.nodes.keys() if is_ingress else self.nodes_on.get(net_id, set())
        addrs = {n.status.addr for m in members if m != node_id and (n := self.nodes.get(m)) is not None
                 and n.status.state == "ready" and n.status.addr}
        return sorted(addrs)

    def _service_endpoints(self, net_id: str) -> list[ServiceEndpoints]:
        out: list[ServiceEndpoints] = []
        for svc in self.services_on.get(net_id, ()):
            endpoint = svc.endpoint
            spec = endpoint.spec if endpoint is not None and endpoint.spec is not None else None
            spec = spec or svc.spec.endpoint_spec
            mode = (spec.mode if spec is not None else "") or "vip"
            vips = [v.addr for v in (endpoint.virtual_ips or ()) if v.network_id == net_id] \
                if endpoint is not None else []
            vip = str(address_of(vips[0]) or "") if vips and mode == "vip" else ""
            aliases = {a for c in svc.spec.task_template.networks or () if c.target == net_id
                       for a in c.aliases or ()}
            out.append(ServiceEndpoints(
                service_id=svc.id, name=svc.spec.name, network_id=net_id, endpoint_mode=mode, vip=vip,
                aliases=sorted(aliases), ports=_ports(endpoint.ports if endpoint is not None else None),
                tasks=list(self.endpoints.get((svc.id, net_id), ()))))
        return out

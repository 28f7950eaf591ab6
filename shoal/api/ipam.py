"""Overlay address management shared by the API server, `swarm init` and the manager's allocator.

Pure functions over what the store holds: every allocation is derived from the stored Networks,
Services and Tasks (nothing else is the truth), so any holder of a transaction can decide.

- Pools: the cluster's DefaultAddrPool (10.0.0.0/8 unless set at init), carved in SubnetSize
  (/24) subnets; a subnet is never one that overlaps another network or a route of the host.
- VNIs: 4097 upwards, the lowest free.
- Addresses: the lowest free host address of a subnet that is not the gateway (VIPs and task
  addresses share the space; each writer checks the other's in its own transaction).
- Published ports: ingress ports are cluster-wide; 0 means the lowest free of 30000-32767.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Iterable

from shoal.api.errors import InvalidArgument
from shoal.api.ids import new_id
from shoal.api.states import TaskState
from shoal.api.types import (
    Driver,
    IPAMConfig,
    IPAMOptions,
    Network,
    NetworkSpec,
    PortConfig,
    Service,
    Task,
)

IPv4Net = ipaddress.IPv4Network
IPv4Addr = ipaddress.IPv4Address

DEFAULT_POOL = "10.0.0.0/8"
DEFAULT_SUBNET_SIZE = 24
MAX_SUBNET_SIZE = 29  # at least 5 host addresses besides the gateway
FIRST_VNI = 4097
VXLAN_OPTION = "com.docker.network.driver.overlay.vxlanid_list"
DYNAMIC_PORTS = range(30000, 32768)
INGRESS_NAME = "ingress"
_INVALID = "rpc error: code = InvalidArgument desc = "


class PoolExhausted(Exception):
    """No free subnet, address or port is left; the message says where."""


def parse_subnet(text: str) -> IPv4Net:
    """An IPv4 CIDR with no host bits set, or InvalidArgument."""
    try:
        net = ipaddress.ip_network(text.strip(), strict=True)
    except ValueError as e:
        raise InvalidArgument(_INVALID + f"invalid subnet {text!r}: {e}") from None
    if not isinstance(net, IPv4Net):
        raise InvalidArgument(_INVALID + f"invalid subnet {text!r}: only IPv4 overlay networks are supported")
    if net.prefixlen > 30:
        raise InvalidArgument(_INVALID + f"invalid subnet {text}: a subnet needs a prefix of /30 or shorter")
    return net


def validate_pools(pools: list[str], size: int, routes: Iterable[IPv4Net]) -> tuple[list[str], int]:
    """The pools and subnet size `swarm init` stores; defaults for empty input. InvalidArgument when
    a pool is not a CIDR, the size does not fit it, or a pool overlaps a route of the host."""
    size = size or DEFAULT_SUBNET_SIZE
    if not pools:
        return [DEFAULT_POOL], size
    routed = list(routes)
    nets: list[IPv4Net] = []
    for text in pools:
        try:
            net = ipaddress.ip_network(text.strip(), strict=False)
        except ValueError:
            raise InvalidArgument(f"invalid default address pool {text!r}: not a CIDR") from None
        if not isinstance(net, IPv4Net):
            raise InvalidArgument(f"invalid default address pool {text}: only IPv4 pools are supported")
        if not net.prefixlen <= size <= MAX_SUBNET_SIZE:
            raise InvalidArgument(f"invalid subnet size {size} for pool {net}: it must be between "
                                  f"{net.prefixlen} and {MAX_SUBNET_SIZE}")
        clash = next((r for r in routed if r.overlaps(net)), None)
        if clash is not None:
            raise InvalidArgument(f"default address pool {net} overlaps the route to {clash} of this host")
        if any(net.overlaps(other) for other in nets):
            raise InvalidArgument(f"default address pools overlap: {net}")
        nets.append(net)
    return [str(n) for n in nets], size


def subnet_of(network: Network) -> IPv4Net | None:
    configs = network.ipam_options.configs if network.ipam_options is not None else None
    return IPv4Net(configs[0].subnet) if configs and configs[0].subnet else None


def gateway_of(network: Network) -> IPv4Addr | None:
    configs = network.ipam_options.configs if network.ipam_options is not None else None
    return IPv4Addr(configs[0].gateway) if configs and configs[0].gateway else None


def vni_of(network: Network) -> int:
    options = network.driver_state.options if network.driver_state is not None else None
    text = (options or {}).get(VXLAN_OPTION, "")
    return int(text) if text.isdigit() else 0


def carve_subnet(pools: list[str], size: int, taken: Iterable[IPv4Net]) -> IPv4Net:
    """The first `size` subnet of the pools that overlaps nothing in `taken`, or PoolExhausted."""
    busy = sorted(taken, key=lambda n: (int(n.network_address), n.prefixlen))
    for pool in pools:
        net = IPv4Net(pool, strict=False)
        step = 1 << (32 - size)
        candidate = int(net.network_address)
        end = int(net.broadcast_address)
        while candidate + step - 1 <= end:
            sub = IPv4Net((candidate, size))
            clash = next((b for b in busy if b.overlaps(sub)), None)
            if clash is None:
                return sub
            # Skip past whatever it hit: a whole clashing block at once (a /8 route is one step).
            candidate = max(candidate + step, _round_up(int(clash.broadcast_address) + 1, step))
    raise PoolExhausted("could not find an available, non-overlapping IPv4 address pool among "
                        "the defaults to assign to the network")


def _round_up(value: int, step: int) -> int:
    return (value + step - 1) // step * step


def free_vni(used: Iterable[int]) -> int:
    busy = set(used)
    vni = FIRST_VNI
    while vni in busy:
        vni += 1
    return vni


def free_address(subnet: IPv4Net, used: set[IPv4Addr]) -> IPv4Addr | None:
    """The lowest host address of `subnet` not in `used` (which holds the gateway), or None."""
    for addr in subnet.hosts():
        if addr not in used:
            return addr
    return None


def with_prefix(addr: IPv4Addr, subnet: IPv4Net) -> str:
    return f"{addr}/{subnet.prefixlen}"


def address_of(text: str) -> IPv4Addr | None:
    """The address of "10.0.1.5/24" (or "10.0.1.5"); None if it is not one."""
    try:
        return IPv4Addr(text.split("/", 1)[0])
    except ValueError:
        return None


def free_port(used: set[int]) -> int:
    for port in DYNAMIC_PORTS:
        if port not in used:
            return port
    raise PoolExhausted(f"no free port left in {DYNAMIC_PORTS.start}-{DYNAMIC_PORTS.stop - 1}")


def make_network(spec: NetworkSpec, *, subnet: IPv4Net, gateway: IPv4Addr | None, vni: int,
                 options: dict[str, str] | None = None, network_id: str = "") -> Network:
    """A Network object with its allocated subnet, gateway (default: first host) and VNI."""
    gw = gateway if gateway is not None else next(subnet.hosts())
    state = Driver(name="overlay", options={**(options or {}), VXLAN_OPTION: str(vni)})
    ipam = IPAMOptions(driver=Driver(name="default"),
                       configs=[IPAMConfig(subnet=str(subnet), gateway=str(gw))])
    return Network(id=network_id or new_id(), spec=spec, driver_state=state, ipam_options=ipam)


def ingress_spec() -> NetworkSpec:
    return NetworkSpec(name=INGRESS_NAME, ingress=True, scope="swarm",
                       driver_configuration=Driver(name="overlay"))


def new_ingress(pools: list[str], size: int, routes: Iterable[IPv4Net], network_id: str = "") -> Network:
    """The `ingress` network `swarm init` creates: the first free subnet of the pools."""
    subnet = carve_subnet(pools, size, routes)
    return make_network(ingress_spec(), subnet=subnet, gateway=None, vni=FIRST_VNI, network_id=network_id)


def ingress_ports(ports: Iterable[PortConfig] | None) -> list[PortConfig]:
    return [p for p in ports or () if p.publish_mode in ("", "ingress") and p.published_port]


def service_network_ids(service: Service, ingress_id: str | None) -> list[str]:
    """The networks a service's tasks attach to: its spec's (IDs, resolved at create/update) and
    `ingress` when it publishes a port in ingress mode."""
    ids = [n.target for n in service.spec.task_template.networks or () if n.target]
    endpoint = service.endpoint
    if ingress_id and endpoint is not None and ingress_ports(endpoint.ports) and ingress_id not in ids:
        ids.append(ingress_id)
    return ids


def vips_on(services: Iterable[Service], network_id: str) -> set[IPv4Addr]:
    out: set[IPv4Addr] = set()
    for svc in services:
        for vip in (svc.endpoint.virtual_ips or ()) if svc.endpoint is not None else ():
            addr = address_of(vip.addr) if vip.network_id == network_id else None
            if addr is not None:
                out.add(addr)
    return out


def holds_addresses(task: Task) -> bool:
    """Whether a task's addresses are still its own: not once it is dead (stopped and not meant to
    run: swarmkit's taskDead), even while the task object is kept in history."""
    running = TaskState.RUNNING.rank
    return not (task.desired_state.rank > running and task.status.state.rank > running)


def task_addresses_on(tasks: Iterable[Task], network_id: str) -> set[IPv4Addr]:
    """Addresses live tasks hold on a network."""
    out: set[IPv4Addr] = set()
    for task in tasks:
        if not task.networks_attachments or not holds_addresses(task):
            continue
        for att in task.networks_attachments or ():
            if att.network.id == network_id:
                out.update(a for a in map(address_of, att.addresses or ()) if a is not None)
    return out


def find_ingress(networks: Iterable[Network]) -> Network | None:
    return next((n for n in networks if n.spec.ingress), None)

"""The lab's network: a switch namespace with bridge br0, and per host a namespace with `eth0`
on that switch, a UTS namespace, and no default route.

The switch subnet is the first /24 of 10.199.0.0/16 that no route of the root namespace touches
and no other lab uses (chosen under the lab lock). Host `nodeI` gets address .I.
"""

from __future__ import annotations

import ipaddress

from shoal.hostnet import links, netns, routes, uts
from shoal.lab import names
from shoal.lab.state import HostState, LabState

POOL = ipaddress.IPv4Network("10.199.0.0/16")


def pick_subnet(used: list[str]) -> ipaddress.IPv4Network:
    """The first /24 of POOL clear of the root namespace's routes and of `used` (other labs)."""
    taken = routes.routed_networks() + [ipaddress.IPv4Network(u) for u in used]
    for candidate in POOL.subnets(new_prefix=24):
        if not routes.overlaps_any(candidate, taken):
            return candidate
    raise names.LabError(f"no free /24 left in {POOL} for a lab switch")


def host_address(subnet: ipaddress.IPv4Network, index: int) -> str:
    return str(subnet.network_address + index)


def make_switch(lab: str) -> None:
    sw = names.switch_netns(lab)
    netns.add(sw)
    links.add_bridge(sw, names.SWITCH_BRIDGE)


def make_host(state: LabState, host: HostState) -> None:
    """The host's netns wired to the switch, its address, and its UTS namespace (hostname)."""
    ns = names.host_netns(state.name, host.name)
    netns.add(ns)
    links.add_veth_to_bridge(names.switch_netns(state.name), names.switch_port(host.name),
                             names.SWITCH_BRIDGE, ns, names.HOST_DEV)
    links.configure(ns, names.HOST_DEV, f"{host.address}/{state.prefixlen}")
    uts.create(names.uts_file(state.name, host.name), host.name)


def set_link(lab: str, host: str, up: bool) -> None:
    """Cut (`up=False`) or heal the host's wire at the switch."""
    links.set_up(names.switch_netns(lab), names.switch_port(host), up)


def link_is_up(lab: str, host: str) -> bool:
    return links.is_up(names.switch_netns(lab), names.switch_port(host))

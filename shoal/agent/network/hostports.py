"""Host-mode published ports (`--publish published=P,target=T,mode=host`): only on hosts running a task.

For every LOCAL task that is serving (per the NetworkState) of a service publishing host-mode ports,
the host's table `ip shoal_hostports` DNATs `ip daddr <node_addr> <proto> dport P` to the task's
address on the host bridge (its `eth0`) port T. Tasks only have the bridge's connected route, so the
DNATed flow is masqueraded to the bridge's gateway address on its way out (the task sees the host's
bridge address as its client, not the real one; a reply route in the task would be needed to keep it).

Pure parts: `plan(state, local)` (which rules) and `render(...)` (the nft script that atomically
replaces the table). `HostPorts` (used by agent/network/host.py) applies a plan: one `nft -f` per
change, nothing when the plan is unchanged, the table deleted when the plan becomes empty (a table
left by a previous shoald is replaced by the first non-empty plan).

SAFETY — the same rule as the routing mesh (host.py): in a namespace WITHOUT a default route (lab
hosts, test namespaces) remote clients are served: a prerouting DNAT, `conf.<underlay>.forwarding`
and `conf.<host bridge>.forwarding` (never `ip_forward`/`conf.all`), and a forward filter that lets
only DNATed flows be routed from or to the host bridge. In a namespace WITH a default route (a real
machine's root namespace) only the output hook is programmed: local clients reach the task, nothing
is forwarded or NATed toward the uplink.
"""

from __future__ import annotations

import ipaddress
import json
import logging
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from shoal.agent.network.lb import numgen_map
from shoal.agent.network.overlay import in_netns, ipn, run, sysctl
from shoal.api.protocol import NetworkState

log = logging.getLogger("shoal.agent.network")

TABLE = "shoal_hostports"
TASK_IFNAME = "eth0"  # every task's interface on the host bridge (agent/network/bridge.py)


@dataclass(frozen=True, order=True)
class HostPortRule:
    """Published `protocol` port `published` of this host -> `targets` ("addr . port", sorted)."""

    protocol: str
    published: int
    targets: tuple[str, ...]


def plan(state: NetworkState, local: Mapping[str, str]) -> list[HostPortRule]:
    """The rules of this host: `local` maps each local task's ID to its host bridge address.

    A task counts when it is serving in some service entry of `state` (a service is listed once per
    network it is on: entries are merged) and has a bridge address; ports of mode "host" with a
    published port and protocol tcp/udp only. Sorted by (protocol, published port)."""
    found: dict[tuple[str, int], set[str]] = {}
    for svc in state.services:
        ports = [p for p in svc.ports if p.mode == "host" and p.published and p.protocol in ("tcp", "udp")]
        if not ports:
            continue
        addrs = {local[t.task_id] for t in svc.tasks if t.serving and local.get(t.task_id)}
        for p in ports:
            targets = found.setdefault((p.protocol, p.published), set())
            targets.update(f"{a} . {p.target}" for a in addrs)
    return [HostPortRule(proto, port, tuple(sorted(targets)))
            for (proto, port), targets in sorted(found.items()) if targets]


def _dnat(rule: HostPortRule, node_addr: str) -> str:
    match = f"ip daddr {node_addr} {rule.protocol} dport {rule.published}"
    if len(rule.targets) == 1:
        addr, port = rule.targets[0].split(" . ")
        return f"    {match} dnat ip to {addr}:{port}"
    return f"    {match} dnat ip addr . port to {numgen_map(rule.targets)}"


def _snat(rules: Sequence[HostPortRule]) -> list[str]:
    out = []
    for rule in rules:
        for target in rule.targets:
            addr, port = target.split(" . ")
            out.append(f"    ct status dnat ip daddr {addr} {rule.protocol} dport {port} masquerade")
    return out


def render(rules: Sequence[HostPortRule], node_addr: str, *, forward_bridge: str | None) -> str:
    """The nft script replacing table `ip shoal_hostports` (only deleting it when `rules` is empty).

    `forward_bridge`: the host bridge, when remote clients may be served (no default route here):
    adds the prerouting DNAT and the forward filter; None: the output hook only."""
    head = f"table ip {TABLE}\ndelete table ip {TABLE}\n"
    if not rules:
        return head
    dnat = [_dnat(r, node_addr) for r in rules]
    lines = ["  chain dnat_local { type nat hook output priority -100; policy accept;", *dnat, "  }",
             "  chain masq { type nat hook postrouting priority 100; policy accept;", *_snat(rules), "  }"]
    if forward_bridge is not None:
        br = f'"{forward_bridge}"'
        lines += ["  chain dnat_in { type nat hook prerouting priority -100; policy accept;", *dnat, "  }",
                  "  chain route_filter { type filter hook forward priority 0; policy accept;",
                  f"    iifname {br} oifname {br} accept", "    ct status dnat accept",
                  f"    iifname {br} drop", f"    oifname {br} drop", "  }"]
    body = "\n".join(lines)
    return f"{head}table ip {TABLE} {{\n{body}\n}}\n"


def device_with(addrs: Iterable[dict[str, Any]], address: str, *, subnet: bool) -> str | None:
    """The interface (from `ip -j -4 addr show`) holding `address` or, with `subnet`, an address
    whose subnet contains it."""
    wanted = ipaddress.IPv4Address(address)
    for link in addrs:
        for a in link.get("addr_info", []) or []:
            if not isinstance(a, dict) or a.get("family", "inet") != "inet" or not a.get("local"):
                continue
            iface = ipaddress.IPv4Interface(f"{a['local']}/{a.get('prefixlen', 32)}")
            if (wanted in iface.network) if subnet else iface.ip == wanted:
                return str(link["ifname"])
    return None


async def task_bridge_address(netns: str) -> str:
    """The task's address on the host bridge (its eth0), "" when it has none."""
    out = await ipn(netns, "-j", "-4", "addr", "show", "dev", TASK_IFNAME, check=False)
    for link in json.loads(out or "[]"):
        for a in link.get("addr_info", []):
            if a.get("local"):
                return str(a["local"])
    return ""


class HostPorts:
    """The table of one host namespace (`netns`, None: the caller's); see the module docstring."""

    def __init__(self, netns: str | None) -> None:
        self._netns = netns
        self._key: tuple[object, ...] | None = None
        self._forwarding: tuple[str, str] | None = None  # (underlay dev, bridge) set to forward

    async def sync(self, rules: Sequence[HostPortRule], node_addr: str, *, forward_allowed: bool,
                   mesh_dev: str | None) -> None:
        """Program `rules` (idempotent). `mesh_dev`: the underlay device the routing mesh forwards
        on (its forwarding is left on when this table stops needing it)."""
        rules = list(rules) if node_addr else []
        devs = await self._devices(rules, node_addr) if rules and forward_allowed else None
        key = (tuple(rules), node_addr, devs, mesh_dev)
        if key == self._key or (not rules and self._key is None):
            return  # unchanged, or nothing ever programmed by this process
        await run(in_netns(self._netns, ["nft", "-f", "-"]),
                  stdin=render(rules, node_addr, forward_bridge=devs[1] if devs else None))
        await self._set_forwarding(devs, mesh_dev)
        self._key = key

    async def clear(self, *, mesh_dev: str | None) -> None:
        await self.sync([], "", forward_allowed=False, mesh_dev=mesh_dev)

    async def _devices(self, rules: Sequence[HostPortRule], node_addr: str) -> tuple[str, str] | None:
        addrs = json.loads(await ipn(self._netns, "-j", "-4", "addr", "show") or "[]")
        underlay = device_with(addrs, node_addr, subnet=False)
        bridge = device_with(addrs, rules[0].targets[0].split(" . ")[0], subnet=True)
        if underlay is None or bridge is None:
            log.warning("host-mode ports: no underlay (%s) or host bridge (%s) found: local clients only",
                        underlay, bridge)
            return None
        return underlay, bridge

    async def _set_forwarding(self, devs: tuple[str, str] | None, mesh_dev: str | None) -> None:
        for dev in set(self._forwarding or ()) - set(devs or ()) - {mesh_dev}:
            await sysctl(self._netns, f"net.ipv4.conf.{dev}.forwarding", "0")
        if devs is not None:
            for dev in devs:
                await sysctl(self._netns, f"net.ipv4.conf.{dev}.forwarding", "1")
        self._forwarding = devs

"""Host-mode published ports (`--publish published=P,target=T,mode=host`): only on hosts running a task.

For every LOCAL task that is serving (per the NetworkState's `host_ports`: services publishing
host-mode ports with a task on this node, on overlay networks or not) the host's table
`ip shoal_hostports` DNATs `ip daddr <node_addr> <proto> dport P` to the task's address on the host
bridge (its `eth0`) port T. No masquerade: the task sees the client's real address. It answers
through the host because `prepare_task` gives its netns reply routing (table `ip shoal_hostreply`):
a new connection arriving on eth0 from outside the bridge subnet gets ct mark `REPLY_MARK`, the mark
is copied onto the replies (the SYN-ACK's route: `tcp_fwmark_accept`), and mark `REPLY_MARK` routes
via the bridge's gateway (the host), whose conntrack undoes the DNAT. An unconnected UDP socket
routes its reply before any hook sees it, and the task has no route to the client: so a UDP
published target port T also gets `ipproto udp sport T` → the same table, consulted after the main
table (only what main cannot route). Anything else the task sends off its subnet still finds no route;
the host's forward filter would drop it in any case.

Pure parts: `plan(state, local)` (which rules) and `render(...)` (the nft script that atomically
replaces the table). `HostPorts` (used by agent/network/host.py) applies a plan: one `nft -f` per
change, nothing when the plan is unchanged, the table deleted when the plan becomes empty (a table
left by a previous shoald is replaced by the first non-empty plan).

SAFETY — the same rule as the routing mesh (host.py): in a namespace WITHOUT a default route (lab
hosts, test namespaces) remote clients are served: a prerouting DNAT, `conf.<underlay>.forwarding`
and `conf.<host bridge>.forwarding` (never `ip_forward`/`conf.all`), and a forward filter that lets
only DNATed flows be routed from or to the host bridge. In a namespace WITH a default route (a real
machine's root namespace) only the output hook is programmed (local clients reach the task) and the
forward filter routes nothing at all from or to the host bridge (should the machine forward, with
`ip_forward=1`): nothing is forwarded or NATed toward the uplink.
"""

from __future__ import annotations

import ipaddress
import json
import logging
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from shoal.agent.network.lb import numgen_map
from shoal.agent.network.mesh import program_reply_routing, stale_rules, udp_reply_rules
from shoal.agent.network.overlay import in_netns, ipn, run, sysctl
from shoal.api.protocol import NetworkState

log = logging.getLogger("shoal.agent.network")

TABLE = "shoal_hostports"
TASK_TABLE = "shoal_hostreply"
TASK_IFNAME = "eth0"  # every task's interface on the host bridge (agent/network/bridge.py)
REPLY_MARK = 0x5200  # ct mark / fwmark / routing table / rule pref of replies via the host bridge
UDP_RULE_PREF = 41000  # + i: `ipproto udp sport T lookup REPLY_MARK`, after main (32766)


@dataclass(frozen=True, order=True)
class HostPortRule:
    """Published `protocol` port `published` of this host -> `targets` ("addr . port", sorted)."""

    protocol: str
    published: int
    targets: tuple[str, ...]


def plan(state: NetworkState, local: Mapping[str, str]) -> list[HostPortRule]:
    """The rules of this host: `local` maps each local task's ID to its host bridge address.

    A task counts when it is serving in a `state.host_ports` entry and has a bridge address; ports
    of mode "host" with a published port and protocol tcp/udp only. Sorted by (protocol, published
    port)."""
    found: dict[tuple[str, int], set[str]] = {}
    for svc in state.host_ports:
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


def render(rules: Sequence[HostPortRule], node_addr: str, *, bridge: str | None, remote: bool) -> str:
    """The nft script replacing table `ip shoal_hostports` (only deleting it when `rules` is empty).

    Always the output-hook DNAT (local clients) and, given the host `bridge`, a forward filter that
    routes nothing from or to it. `remote` (no default route here): also the prerouting DNAT, and
    the filter passes DNATed flows."""
    head = f"table ip {TABLE}\ndelete table ip {TABLE}\n"
    if not rules:
        return head
    dnat = [_dnat(r, node_addr) for r in rules]
    lines = ["  chain dnat_local { type nat hook output priority -100; policy accept;", *dnat, "  }"]
    if remote:
        lines += ["  chain dnat_in { type nat hook prerouting priority -100; policy accept;", *dnat, "  }"]
    if bridge is not None:
        br = f'"{bridge}"'
        lines += ["  chain route_filter { type filter hook forward priority 0; policy accept;",
                  f"    iifname {br} oifname {br} accept", *(["    ct status dnat accept"] if remote else []),
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
    """The task's address on the host bridge (its eth0) as "addr/prefixlen", "" when it has none."""
    out = await ipn(netns, "-j", "-4", "addr", "show", "dev", TASK_IFNAME, check=False)
    for link in json.loads(out or "[]"):
        for a in link.get("addr_info", []):
            if a.get("local"):
                return f"{a['local']}/{a.get('prefixlen', 32)}"
    return ""


def task_udp_ports(state: NetworkState, task_id: str) -> tuple[int, ...]:
    """The UDP target ports `task_id` serves through host-mode published ports (sorted)."""
    return tuple(sorted({p.target for svc in state.host_ports if any(t.task_id == task_id for t in svc.tasks)
                         for p in svc.ports if p.mode == "host" and p.published and p.protocol == "udp"}))


def render_task(subnet: str) -> str:
    """The nft script of a task's netns: mark connections from off the bridge subnet, and their replies."""
    mark = f"0x{REPLY_MARK:x}"
    lines = [
        "  chain mark_in { type filter hook prerouting priority -150; policy accept;",
        f'    iifname "{TASK_IFNAME}" ct state new ip saddr != {subnet} ct mark set {mark}',
        f"    ct mark {mark} meta mark set ct mark",  # with tcp_fwmark_accept: the SYN-ACK's route
        "  }",
        "  chain mark_reply { type route hook output priority -150; policy accept;",
        f"    ct mark {mark} meta mark set ct mark", "  }"]
    body = "\n".join(lines)
    return f"table ip {TASK_TABLE}\ndelete table ip {TASK_TABLE}\ntable ip {TASK_TABLE} {{\n{body}\n}}\n"


def task_route_commands(gateway: str, udp_ports: Sequence[int], old_prefs: Iterable[int]) -> list[str]:
    """`ip -batch` lines for a task's reply routing (idempotent given its current rule prefs)."""
    cmds = stale_rules(old_prefs, range(REPLY_MARK, REPLY_MARK + 1),
                       range(UDP_RULE_PREF, UDP_RULE_PREF + 0x1000))
    cmds += [f"rule add pref {REPLY_MARK} fwmark {REPLY_MARK} lookup {REPLY_MARK}",
             f"route replace default via {gateway} dev {TASK_IFNAME} table {REPLY_MARK}"]
    return cmds + udp_reply_rules(UDP_RULE_PREF, udp_ports, REPLY_MARK)


async def prepare_task(netns: str, bridge_cidr: str, udp_ports: Sequence[int]) -> None:
    """Give task netns `netns` (eth0 at `bridge_cidr` on the host bridge, whose gateway is the
    subnet's first address) the reply routing of host-mode published ports; idempotent."""
    iface = ipaddress.IPv4Interface(bridge_cidr)
    gateway = str(iface.network.network_address + 1)  # agent/network/ipam.py: the bridge's address
    await program_reply_routing(netns, TASK_IFNAME, render_task(str(iface.network)),
                                lambda prefs: task_route_commands(gateway, udp_ports, prefs))


class HostPorts:
    """The table of one host namespace (`netns`, None: the caller's); see the module docstring."""

    def __init__(self, netns: str | None) -> None:
        self._netns = netns
        self._key: tuple[object, ...] | None = None  # what is programmed
        self._wanted: tuple[object, ...] | None = None  # the arguments of the last sync
        self._forwarding: tuple[str | None, str | None] | None = None  # (underlay, bridge) forwarding

    async def sync(self, rules: Sequence[HostPortRule], node_addr: str, *, forward_allowed: bool,
                   mesh_dev: str | None) -> None:
        """Program `rules` (idempotent). `forward_allowed`: remote clients may be served (no default
        route here). `mesh_dev`: the underlay device the routing mesh forwards on (its forwarding
        is left on when this table stops needing it)."""
        rules = list(rules) if node_addr else []
        wanted = (tuple(rules), node_addr, forward_allowed, mesh_dev)
        if wanted == self._wanted or (not rules and self._key is None):
            return  # unchanged (no device lookup), or nothing ever programmed by this process
        underlay, bridge = await self._devices(rules, node_addr) if rules else (None, None)
        devs = (underlay, bridge) if forward_allowed and underlay and bridge else None
        if rules and forward_allowed and devs is None:
            log.warning("host-mode ports: no underlay (%s) or host bridge (%s) found: local clients only",
                        underlay, bridge)
        key = (tuple(rules), node_addr, bridge, devs, mesh_dev)
        if key != self._key:
            await run(in_netns(self._netns, ["nft", "-f", "-"]),
                      stdin=render(rules, node_addr, bridge=bridge, remote=devs is not None))
            await self._set_forwarding(devs, mesh_dev)
            self._key = key
        self._wanted = wanted

    async def clear(self, *, mesh_dev: str | None) -> None:
        await self.sync([], "", forward_allowed=False, mesh_dev=mesh_dev)

    async def _devices(self, rules: Sequence[HostPortRule], node_addr: str) -> tuple[str | None, str | None]:
        """(the device holding `node_addr`, the host bridge: the device on the first target's subnet)."""
        addrs = json.loads(await ipn(self._netns, "-j", "-4", "addr", "show") or "[]")
        return (device_with(addrs, node_addr, subnet=False),
                device_with(addrs, rules[0].targets[0].split(" . ")[0], subnet=True))

    async def _set_forwarding(self, devs: tuple[str | None, str | None] | None, mesh_dev: str | None) -> None:
        for dev in set(self._forwarding or ()) - set(devs or ()) - {mesh_dev, None}:
            await sysctl(self._netns, f"net.ipv4.conf.{dev}.forwarding", "0")
        for dev in devs or ():
            if dev is not None:
                await sysctl(self._netns, f"net.ipv4.conf.{dev}.forwarding", "1")
        self._forwarding = devs

"""The ingress routing mesh, keeping the client's source address (unlike Swarm, moby#25526).

Every host has an address on the ingress overlay (`ensure_network(..., gateway_ip=H_k)`, unique
per host), so its ingress bridge carries the MAC `mac_for(H_k)` = 02:42 + the bytes of H_k. Every
host DNATs a published port arriving on its underlay address to a backend task's ingress address,
anywhere in the cluster, and does NOT masquerade. The backend task must send its replies back
through the entry host, whose conntrack entry undoes the DNAT. It finds that host from the source
MAC of the request: the task's netns marks each new connection from outside the ingress subnet with
the entry host's index (ct mark from an `ether saddr` map of all hosts' ingress MACs), copies the
ct mark onto its reply packets, and policy routing sends mark `k` via H_k.

Packet walk — client C (underlay U1) → entry host E (U2) port 8080 → task T (ingress T_ip, on host B):

| # | where | packet (src → dst) | what happens |
|---|---|---|---|
| 1 | C | U1:s → U2:8080 | plain underlay traffic to E |
| 2 | E nat prerouting | U1:s → T_ip:80 | `dnat ip addr . port to numgen inc mod N map {…}`; no SNAT |
| 3 | E routing | same, out `sov<ing>` | connected route (E has H_E there); src MAC mac_for(H_E) |
| 4 | E → B | VXLAN U2 → UB | flood/learned fdb; B's `sov<ing>` bridges it to T's veth |
| 5 | T prerouting | U1:s → T_ip:80 | new, from outside the subnet: ct mark = map[src MAC] = MARK+E |
| 6 | T app | accept() | REMOTE_ADDR = U1, the client's real address |
| 7 | T output | T_ip:80 → U1:s | mark = ct mark (SYN-ACK: tcp_fwmark_accept); fwmark MARK+E → via H_E |
| 8 | T → E | L2 to mac_for(H_E) | B's bridge + VXLAN back to E; B's host routes nothing |
| 9 | E forward | U2:8080 → U1:s | conntrack undoes step 2; out `eth0` to C |

Locally generated requests (a host hitting its own U:8080) take the output nat chain with the same
rule; their source is U_E and the reply comes back to E the same way. Connections from inside the
ingress subnet are not marked and use the connected route.

What is enabled where: in the host netns, `conf.<underlay>.forwarding` and
`conf.sov<ing>.forwarding` only (never `ip_forward`/`conf.all`, which would make every interface a
router), plus a forward filter that passes only bridged ingress traffic and DNATed (mesh) flows and
drops anything else routed from or to those two interfaces — so the mesh is no path between
overlays or from the underlay into a task. A published port with no running task is rejected
(TCP reset) by the entry host.

UDP: an unconnected UDP socket routes its reply before any hook sees it, and the task has no
route to the client. So each UDP target port T of the task's ingress-published ports also gets a
rule after the main table, `ipproto udp sport T lookup MARK_BASE`, whose table routes via the
task's own host's ingress address: the reply leaves the socket with the task's ingress address as
source, conntrack finds the connection (and its ct mark), `mark_reply` sets the mark and the packet
is routed again, now via the entry host. A UDP packet of that port to anyone else reaches only the
own host, whose forward filter drops it. Tested in tests/integration/test_udp_ports.py.
"""

from __future__ import annotations

import ipaddress
import json
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass

from shoal.agent.network.lb import numgen_map
from shoal.agent.network.overlay import bridge_name, in_netns, ipn, mac_for, run, sysctl

HOST_TABLE = "shoal_ingress"
TASK_TABLE = "shoal_mesh"
MARK_BASE = 0x5300  # entry host k (1-based index in the host list) -> ct mark / table / rule pref
UDP_RULE_PREF = 40000  # + i: `ipproto udp sport T lookup MARK_BASE` (UDP replies), after main


@dataclass(frozen=True)
class PublishedPort:
    """A port published on every host (`published`) forwarded to tasks' `target` port."""

    published: int
    target: int
    protocol: str = "tcp"

    def __post_init__(self) -> None:
        if self.protocol not in ("tcp", "udp"):
            raise ValueError(f"protocol {self.protocol!r} not tcp or udp")
        for port in (self.published, self.target):
            if not 0 < port < 65536:
                raise ValueError(f"port {port} out of range")


def _dnat_rules(ports: Sequence[PublishedPort], backends: Mapping[int, Sequence[str]],
                underlay_ip: str) -> tuple[list[str], list[str]]:
    nat, empty = [], []
    for p in ports:
        match = f"ip daddr {underlay_ip} {p.protocol} dport {p.published}"
        targets = [f"{b} . {p.target}" for b in backends.get(p.published, ())]
        if targets:
            nat.append(f"    {match} dnat ip addr . port to {numgen_map(targets)}")
        else:
            reject = "reject with tcp reset" if p.protocol == "tcp" else "reject"
            empty.append(f"    {match} {reject}")
    return nat, empty


def render_host(ports: Sequence[PublishedPort], backends: Mapping[int, Sequence[str]], *,
                underlay_ip: str, underlay_dev: str, ingress_bridge: str) -> str:
    """The nft script that atomically replaces the host's table `ip shoal_ingress`."""
    nat, empty = _dnat_rules(ports, backends, underlay_ip)
    ing, ul = f'"{ingress_bridge}"', f'"{underlay_dev}"'
    lines = [
        "  chain dnat_in { type nat hook prerouting priority -100; policy accept;", *nat, "  }",
        "  chain dnat_local { type nat hook output priority -100; policy accept;", *nat, "  }",
        "  chain no_task { type filter hook input priority 0; policy accept;", *empty, "  }",
        "  chain route_filter { type filter hook forward priority 0; policy accept;",
        f"    iifname {ing} oifname {ing} accept",
        "    ct status dnat accept",
        f"    iifname {{ {ing}, {ul} }} drop",
        f"    oifname {{ {ing}, {ul} }} drop", "  }"]
    body = "\n".join(lines)
    return f"table ip {HOST_TABLE}\ndelete table ip {HOST_TABLE}\ntable ip {HOST_TABLE} {{\n{body}\n}}\n"


async def program_ingress(ports: Sequence[PublishedPort], backends: Mapping[int, Sequence[str]], *,
                          underlay_ip: str, underlay_dev: str, ingress_vni: int,
                          netns: str | None = None) -> None:
    """Program a host (its netns: `netns`, None for the caller's) for the routing mesh; idempotent.

    `backends` maps a published port to the ingress addresses of the service's running tasks, on
    any host. The ingress network must exist here (`ensure_network` with this host's ingress
    address as `gateway_ip`). One nft transaction per call; existing connections are untouched.
    """
    ingress = bridge_name(ingress_vni)
    await run(in_netns(netns, ["nft", "-f", "-"]), stdin=render_host(
        ports, backends, underlay_ip=underlay_ip, underlay_dev=underlay_dev, ingress_bridge=ingress))
    for dev in (underlay_dev, ingress):
        await sysctl(netns, f"net.ipv4.conf.{dev}.forwarding", "1")


async def clear_ingress(underlay_dev: str, ingress_vni: int, *, netns: str | None = None) -> None:
    """Undo `program_ingress`: the table goes and the two interfaces stop forwarding."""
    await run(in_netns(netns, ["nft", "-f", "-"]),
              stdin=f"table ip {HOST_TABLE}\ndelete table ip {HOST_TABLE}\n")
    for dev in (underlay_dev, bridge_name(ingress_vni)):
        await sysctl(netns, f"net.ipv4.conf.{dev}.forwarding", "0")


def render_task(ifname: str, subnet: str, host_ips: Sequence[str]) -> str:
    """The nft script of a backend task's netns: mark by entry host, copy the mark onto replies."""
    elements = ", ".join(f"{mac_for(h)} : {MARK_BASE + k}" for k, h in enumerate(host_ips, 1))
    lines = [
        "  map entry { type ether_addr : mark;" + (f" elements = {{ {elements} }}" if elements else "")
        + " }",
        "  chain mark_entry { type filter hook prerouting priority -150; policy accept;",
        f'    iifname "{ifname}" ct state new ip saddr != {subnet} ct mark set ether saddr map @entry',
        "    ct mark != 0 meta mark set ct mark",  # with tcp_fwmark_accept: the SYN-ACK's route
        "  }",
        "  chain mark_reply { type route hook output priority -150; policy accept;",
        "    ct mark != 0 meta mark set ct mark", "  }"]
    body = "\n".join(lines)
    return f"table ip {TASK_TABLE}\ndelete table ip {TASK_TABLE}\ntable ip {TASK_TABLE} {{\n{body}\n}}\n"


def udp_reply_rules(pref: int, udp_ports: Sequence[int], table: int) -> list[str]:
    """`ip -batch` lines: UDP from each port in `udp_ports` looks up `table` after main (prefs
    `pref`, `pref`+1, …); see the module docstring. Shared with hostports.py."""
    return [f"rule add pref {pref + i} ipproto udp sport {port} lookup {table}"
            for i, port in enumerate(udp_ports)]


def stale_rules(old_prefs: Iterable[int], *ranges: range) -> list[str]:
    """`ip -batch` lines deleting the rules whose pref is in one of `ranges` (ours, to be redone)."""
    return [f"rule del pref {p}" for p in sorted(set(old_prefs)) if any(p in r for r in ranges)]


def backend_route_commands(ifname: str, host_ips: Sequence[str], own_ip: str, udp_ports: Sequence[int],
                           old_prefs: Iterable[int]) -> list[str]:
    """`ip -batch` lines for a backend task's reply routing (idempotent given its rule prefs)."""
    cmds = stale_rules(old_prefs, range(MARK_BASE + 1, MARK_BASE + 0x1000),
                       range(UDP_RULE_PREF, UDP_RULE_PREF + 0x1000))
    for k, h in enumerate(host_ips, 1):
        mark = MARK_BASE + k
        cmds += [f"rule add pref {mark} fwmark {mark} lookup {mark}",
                 f"route replace default via {h} dev {ifname} table {mark}"]
    if own_ip and udp_ports:
        cmds.append(f"route replace default via {own_ip} dev {ifname} table {MARK_BASE}")
        cmds += udp_reply_rules(UDP_RULE_PREF, udp_ports, MARK_BASE)
    return cmds


async def program_reply_routing(netns: str, ifname: str, nft_script: str,
                                commands: Callable[[Iterable[int]], list[str]]) -> None:
    """Apply a task's reply routing: `nft_script` (replaces its table), then the `ip -batch` lines
    `commands(prefs of the rules it has now)`, reverse-path filtering off on `ifname` (replies and
    requests take different paths) and `tcp_fwmark_accept` (an accepted socket keeps the SYN's mark).
    Shared with hostports.py."""
    await run(in_netns(netns, ["nft", "-f", "-"]), stdin=nft_script)
    rules = json.loads(await ipn(netns, "-j", "rule", "show") or "[]")
    cmds = commands(int(r.get("priority", 0)) for r in rules)
    if cmds:
        await ipn(netns, "-batch", "-", stdin="\n".join(cmds) + "\n")
    await sysctl(netns, f"net.ipv4.conf.{ifname}.rp_filter", "0")
    await sysctl(netns, "net.ipv4.tcp_fwmark_accept", "1")


async def prepare_backend(netns: str, ifname: str, subnet: str, host_ips: Sequence[str], *,
                          own_ip: str = "", udp_ports: Sequence[int] = ()) -> None:
    """Make task netns `netns` (on ingress as `ifname`) answer mesh clients via their entry host.

    `host_ips`: every host's ingress address, in one order shared by the whole cluster (host k is
    `host_ips[k-1]`); `own_ip`: this host's ingress address and `udp_ports` the task's UDP target
    ports published through the mesh (see the module docstring); call again when they change.
    Idempotent.
    """
    net = ipaddress.IPv4Network(subnet, strict=True)
    await program_reply_routing(
        netns, ifname, render_task(ifname, str(net), host_ips),
        lambda prefs: backend_route_commands(ifname, host_ips, own_ip, udp_ports, prefs))

"""Overlay networks on one host: a bridge per network joined to the other hosts by VXLAN.

Per network (VNI `v`), in the host's network namespace (`netns=None`: the caller's own; tests pass
a lab host's name):

| object | name | what |
|---|---|---|
| bridge | `sov<v>` | the network's switch on this host; MTU `mtu`; an address only when `gateway_ip` |
| vxlan | `svx<v>` | port of `sov<v>`: id `v`, UDP 4789, `local` = this host's underlay address, learning |
| flood entry | `00:00:00:00:00:00 dev svx<v> dst PEER` | one per other host (`set_peers`) |
| task veth | `sot<sha1(netns/ifname)[:12]>` | host end on `sov<v>`; peer `ifname` (eth1…) in the task |

Head-end replication: broadcast and unknown unicast (ARP first) go to every peer in the flood list;
the vxlan device learns remote MACs from what comes back. `set_peers` keeps the flood list exactly
equal to the peer set and also forgets learned MACs behind a removed peer, so a departed host is cut
at once rather than after the 300 s ageing. The default MTU, 1450, leaves room for the 50 bytes of
VXLAN over IPv4 on a 1500-byte underlay; bridge, vxlan and both veth ends all get it.

Isolation: each VNI has its own bridge and the vxlan device only accepts its own VNI. A plain overlay
bridge has no address on the host (`gateway_ip=None`), so the host has no route into it and can
route nothing between overlays; this module never turns on forwarding. Tasks get the connected route
of their network's subnet and nothing else. When `gateway_ip` is given (the ingress network: each
host's own ingress address, unique per host) the bridge gets that address and the MAC `mac_for(ip)`
(Docker style, 02:42 + the IPv4 bytes), which the routing mesh uses to tell entry hosts apart.
"""

from __future__ import annotations

import asyncio
import hashlib
import ipaddress
import json
import os

from shoal.agent.exec.protocol import ExecError
from shoal.agent.network.bridge import ip

VXLAN_PORT = 4789
DEFAULT_MTU = 1450
ZERO_MAC = "00:00:00:00:00:00"
NETNS_DIR = "/run/netns"


class NetworkInUse(ExecError):
    """`remove_network` refused: tasks still have veths on the network's bridge."""


# Device names carry the daemon's tag when one is set (shoald sets its instance tag at start), so
# that two shoalds sharing a network namespace (tests on one machine) never share a bridge. One
# shoald per host needs no tag; the library's own tests run without one.
_name_tag = ""


def set_name_tag(tag: str) -> None:
    """Tag this process's device names: up to 6 lowercase hex digits ("" = untagged)."""
    global _name_tag
    if len(tag) > 6 or any(c not in "0123456789abcdef" for c in tag):
        raise ValueError(f"bad overlay name tag {tag!r}")
    _name_tag = tag


def bridge_name(vni: int) -> str:
    """`sov<vni>`, or `o<tag><vni>` when tagged (at most 15 characters either way)."""
    return f"o{_name_tag}{_check_vni(vni)}" if _name_tag else f"sov{_check_vni(vni)}"


def vxlan_name(vni: int) -> str:
    return f"x{_name_tag}{_check_vni(vni)}" if _name_tag else f"svx{_check_vni(vni)}"


def veth_name(netns: str, ifname: str) -> str:
    """The host side of a task's veth: `sot` + 12 hex of sha1(netns/ifname) (15 chars)."""
    return "sot" + hashlib.sha1(f"{netns}/{ifname}".encode()).hexdigest()[:12]


def mac_for(address: str) -> str:
    """Docker-style MAC for an IPv4 address: 02:42 followed by its four bytes."""
    return "02:42:" + ":".join(f"{b:02x}" for b in ipaddress.IPv4Address(address).packed)


def _check_vni(vni: int) -> int:
    if not 1 <= vni < 1 << 24:
        raise ValueError(f"VNI {vni} out of range 1..16777215")
    return vni


async def run(argv: list[str], *, stdin: str | None = None, check: bool = True) -> str:
    """Run a host tool; stdout, or ExecError with its stderr when `check` and it fails."""
    proc = await asyncio.create_subprocess_exec(
        *argv, stdin=asyncio.subprocess.PIPE if stdin is not None else asyncio.subprocess.DEVNULL,
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE)
    out, err = await proc.communicate(stdin.encode() if stdin is not None else None)
    if check and proc.returncode != 0:
        raise ExecError(f"{' '.join(argv)}: {err.decode(errors='replace').strip()}")
    return out.decode()


def in_netns(netns: str | None, argv: list[str]) -> list[str]:
    """`argv` run inside named netns `netns` (unchanged for None: the caller's namespace)."""
    return argv if netns is None else ["nsenter", f"--net={NETNS_DIR}/{netns}", "--", *argv]


async def ipn(netns: str | None, *args: str, stdin: str | None = None, check: bool = True) -> str:
    """`ip [-n NETNS] ARGS`."""
    return await ip(*(("-n", netns) if netns else ()), *args, stdin=stdin, check=check)


async def sysctl(netns: str | None, key: str, value: str) -> None:
    await run(in_netns(netns, ["sysctl", "-qw", f"{key}={value}"]))


async def _link(netns: str | None, name: str) -> dict[str, object] | None:
    out = await ipn(netns, "-d", "-j", "link", "show", "dev", name, check=False)
    links = json.loads(out or "[]")
    return links[0] if links else None


def _vxlan_matches(link: dict[str, object], vni: int, local_ip: str) -> bool:
    info = link.get("linkinfo")
    data = info.get("info_data", {}) if isinstance(info, dict) else {}
    return (isinstance(data, dict) and data.get("id") == vni and data.get("local") == local_ip
            and data.get("port") == VXLAN_PORT)


async def ensure_network(vni: int, subnet: str, gateway_ip: str | None, local_underlay_ip: str,
                         mtu: int = DEFAULT_MTU, *, netns: str | None = None, vxlan: bool = True) -> None:
    """Bridge `sov<vni>` + vxlan `svx<vni>` (UDP 4789, local underlay address), up; idempotent.

    `gateway_ip` (in `subnet`, unique per host) gives the host an address on the network — only the
    ingress network needs one. A vxlan left with another id, local address or port is recreated.
    `vxlan=False` makes only the bridge (a network with no peer host yet): a network namespace
    can hold one vxlan device per VNI and port, so a host alone on a network does not claim one.
    """
    net = ipaddress.IPv4Network(subnet, strict=True)
    br, vx = bridge_name(vni), vxlan_name(vni)
    if await _link(netns, br) is None:
        await ipn(netns, "link", "add", br, "type", "bridge")
    link = await _link(netns, vx)
    if link is not None and not _vxlan_matches(link, vni, local_underlay_ip):
        await ipn(netns, "link", "del", vx)
        link = None
    if link is None and vxlan:
        await ipn(netns, "link", "add", vx, "type", "vxlan", "id", str(vni), "dstport",
                  str(VXLAN_PORT), "local", local_underlay_ip, "learning")
        link = {"ifname": vx}
    cmds = [f"link set {br} mtu {mtu}"]
    if link is not None:
        cmds.insert(0, f"link set {vx} mtu {mtu} master {br}")
    if gateway_ip is not None:
        if ipaddress.IPv4Address(gateway_ip) not in net:
            raise ValueError(f"gateway {gateway_ip} not in {subnet}")
        cmds += [f"link set {br} address {mac_for(gateway_ip)}",
                 f"addr replace {gateway_ip}/{net.prefixlen} dev {br}"]
    cmds += [f"link set {vx} up"] if link is not None else []
    cmds += [f"link set {br} up"]
    await ipn(netns, "-batch", "-", stdin="\n".join(cmds) + "\n")


async def _fdb(netns: str | None, vx: str) -> list[dict[str, object]]:
    args = ["bridge", *(("-n", netns) if netns else ()), "-j", "fdb", "show", "dev", vx]
    return list(json.loads(await run(args) or "[]"))


async def set_peers(vni: int, peers: set[str], *, netns: str | None = None) -> None:
    """Make the flood list of `svx<vni>` exactly `peers` (underlay addresses of the other hosts).

    Missing peers are appended; stale ones are deleted together with the MACs learned behind them.
    """
    vx = vxlan_name(vni)
    entries = await _fdb(netns, vx)
    flood = {str(e["dst"]) for e in entries if e.get("mac") == ZERO_MAC and "dst" in e}
    stale = flood - peers
    cmds = [f"fdb append {ZERO_MAC} dev {vx} dst {p}" for p in sorted(peers - flood)]
    cmds += [f"fdb del {ZERO_MAC} dev {vx} dst {p}" for p in sorted(stale)]
    cmds += [f"fdb del {e['mac']} dev {vx} dst {e['dst']}" for e in entries
             if e.get("mac") != ZERO_MAC and str(e.get("dst")) in stale]
    if cmds:
        await run(["bridge", *(("-n", netns) if netns else ()), "-batch", "-"],
                  stdin="\n".join(cmds) + "\n")


async def attach(netns: str, vni: int, ifname: str, address_cidr: str, mtu: int = DEFAULT_MTU, *,
                 host_netns: str | None = None) -> None:
    """A veth from `sov<vni>` into the task's existing netns `netns` as `ifname`; idempotent.

    The task side gets `address_cidr` (its MAC derived from the address), MTU `mtu`, and only the
    connected route of the subnet.
    """
    iface = ipaddress.IPv4Interface(address_cidr)
    veth = veth_name(netns, ifname)
    await detach(netns, ifname, host_netns=host_netns)  # a half-made attempt is redone from scratch
    await ipn(host_netns, "-batch", "-", stdin=(
        f"link add {veth} mtu {mtu} type veth peer name {ifname} netns {netns} mtu {mtu} "
        f"address {mac_for(str(iface.ip))}\n"
        f"link set {veth} master {bridge_name(vni)} up\n"))
    await ipn(netns, "-batch", "-", stdin=(
        f"addr add {iface.with_prefixlen} dev {ifname}\n"
        f"link set {ifname} up\nlink set lo up\n"))


async def detach(netns: str, ifname: str, *, host_netns: str | None = None) -> None:
    """Remove the task's veth on a network (both ends); a no-op when it is gone."""
    await ipn(host_netns, "link", "del", veth_name(netns, ifname), check=False)
    if await _exists_in(netns):
        await ipn(netns, "link", "del", ifname, check=False)


async def _exists_in(netns: str) -> bool:
    return os.path.exists(f"{NETNS_DIR}/{netns}")


async def network_in_use(vni: int, *, netns: str | None = None) -> bool:
    """Whether any port other than the vxlan device is on the network's bridge."""
    out = await ipn(netns, "-j", "link", "show", "master", bridge_name(vni), check=False)
    ports = {str(link.get("ifname")) for link in json.loads(out or "[]")}
    return bool(ports - {vxlan_name(vni)})


async def remove_network(vni: int, *, netns: str | None = None) -> None:
    """Delete `svx<vni>` and `sov<vni>`; NetworkInUse while a task is still attached."""
    if await network_in_use(vni, netns=netns):
        raise NetworkInUse(f"network with VNI {vni} still has tasks attached")
    await ipn(netns, "link", "del", vxlan_name(vni), check=False)
    await ipn(netns, "link", "del", bridge_name(vni), check=False)

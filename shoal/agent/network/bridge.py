"""The host bridge and each task's network namespace, driven through the iproute2 CLI.

Used by the crun executor (agent/exec/crun.py). `ip -batch -` / `ip -n NS -batch -` keep a
task's plumbing to three `ip` processes (the fastest method measured in host-runtime-notes §3).
Containers get only the connected route of the bridge subnet: no default route, no NAT, and
forwarding is never turned on.
"""

from __future__ import annotations

import asyncio
import ipaddress
import json

from shoal.agent.exec.protocol import ExecError


async def ip(*args: str, stdin: str | None = None, check: bool = True) -> str:
    """Run `ip ARGS`; stdout, or ExecError with ip's message when `check` and it fails."""
    proc = await asyncio.create_subprocess_exec(
        "ip", *args, stdin=asyncio.subprocess.PIPE if stdin is not None else asyncio.subprocess.DEVNULL,
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE)
    out, err = await proc.communicate(stdin.encode() if stdin is not None else None)
    if check and proc.returncode != 0:
        raise ExecError(f"ip {' '.join(args)}: {err.decode(errors='replace').strip()}")
    return out.decode()


def _overlapping(routes: list[dict[str, object]], net: ipaddress.IPv4Network,
                 bridge: str) -> list[str]:
    found = []
    for route in routes:
        dst = str(route.get("dst", ""))
        if dst in ("", "default") or route.get("dev") == bridge:
            continue  # the default route overlaps everything; our own bridge's route is fine
        try:
            other = ipaddress.IPv4Network(dst, strict=False)
        except ValueError:
            continue
        if other.overlaps(net):
            found.append(f"{dst} dev {route.get('dev', '?')}")
    return found


async def check_cidr_free(cidr: str, bridge: str) -> None:
    """ValueError if `cidr` overlaps any route the host has, other than our bridge's own."""
    net = ipaddress.IPv4Network(cidr, strict=True)
    routes = json.loads(await ip("-j", "-4", "route", "show", "table", "all") or "[]")
    clash = _overlapping(routes, net, bridge)
    if clash:
        raise ValueError(f"bridge cidr {cidr} overlaps host route(s): {', '.join(clash)}")


async def ensure_bridge(bridge: str, gateway: str, prefixlen: int) -> None:
    """Create the bridge with the gateway address and bring it up; idempotent."""
    exists = await ip("-j", "addr", "show", "dev", bridge, check=False)
    if not exists.strip():
        await ip("link", "add", bridge, "type", "bridge")
    addrs = json.loads(exists or "[]")
    have = {a.get("local") for link in addrs for a in link.get("addr_info", [])}
    cmds = [] if gateway in have else [f"addr add {gateway}/{prefixlen} dev {bridge}"]
    cmds.append(f"link set {bridge} up")
    await ip("-batch", "-", stdin="\n".join(cmds) + "\n")


async def remove_bridge(bridge: str) -> None:
    await ip("link", "del", bridge, check=False)


async def attach(netns: str, veth: str, bridge: str, address: str, prefixlen: int) -> None:
    """New netns with eth0 (the veth's peer) at `address`, host side enslaved to the bridge."""
    await detach(netns, veth)  # idempotent: a half-made attempt is redone from scratch
    await ip("netns", "add", netns)
    await ip("-batch", "-", stdin=(
        f"link add {veth} type veth peer name eth0 netns {netns}\n"
        f"link set {veth} master {bridge} up\n"
        # A reused address may still map to a departed task's MAC in the host's cache.
        f"neigh flush to {address} dev {bridge}\n"))
    await ip("-n", netns, "-batch", "-", stdin=(
        f"addr add {address}/{prefixlen} dev eth0\n"
        "link set eth0 up\nlink set lo up\n"))


async def detach(netns: str, veth: str) -> None:
    """Delete the netns (which destroys eth0 and so the pair) and the host side if left."""
    await ip("netns", "del", netns, check=False)
    await ip("link", "del", veth, check=False)


async def link_exists(name: str) -> bool:
    return bool((await ip("-j", "link", "show", "dev", name, check=False)).strip())

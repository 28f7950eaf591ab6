"""Links inside named network namespaces: bridges, veth pairs between namespaces, addresses."""

from __future__ import annotations

import json

from shoal.hostnet.cmd import ip, ip_batch


def add_bridge(netns: str, name: str) -> None:
    """A bridge `name` in `netns`, up, with no address (a plain switch)."""
    ip_batch([f"link add {name} type bridge", f"link set {name} up"], netns=netns)


def add_veth_to_bridge(netns: str, name: str, bridge: str, peer_netns: str, peer_name: str) -> None:
    """A veth pair: `name` in `netns` enslaved to `bridge` and up, `peer_name` in `peer_netns`."""
    ip_batch([f"link add {name} type veth peer name {peer_name} netns {peer_netns}",
              f"link set {name} master {bridge} up"], netns=netns)


def configure(netns: str, dev: str, address: str) -> None:
    """Give `dev` in `netns` the address `address` (CIDR form) and bring it and lo up."""
    ip_batch([f"addr replace {address} dev {dev}", f"link set {dev} up", "link set lo up"],
             netns=netns)


def set_up(netns: str, dev: str, up: bool) -> None:
    ip("link", "set", dev, "up" if up else "down", netns=netns)


def is_up(netns: str, dev: str) -> bool:
    """Whether `dev` in `netns` is administratively up (False when it does not exist)."""
    out = ip("-j", "link", "show", "dev", dev, netns=netns, check=False)
    links = json.loads(out or "[]")
    return bool(links) and "UP" in links[0].get("flags", [])


def exists(netns: str | None, dev: str) -> bool:
    return bool(ip("-j", "link", "show", "dev", dev, netns=netns, check=False).strip())


def delete(netns: str | None, dev: str) -> None:
    ip("link", "delete", dev, netns=netns, check=False)

"""The IPv4 networks a namespace has routes to (every table), for picking subnets that clash with none."""

from __future__ import annotations

import ipaddress
import json

from shoal.hostnet.cmd import ip

_SKIP = ("", "default", "0.0.0.0/0")


def routed_networks(netns: str | None = None) -> list[ipaddress.IPv4Network]:
    """Destinations of every IPv4 route of `netns` (None: the caller's namespace), default excluded."""
    routes = json.loads(ip("-j", "-4", "route", "show", "table", "all", netns=netns) or "[]")
    nets: list[ipaddress.IPv4Network] = []
    for route in routes:
        dst = str(route.get("dst", ""))
        if dst in _SKIP:
            continue
        try:
            nets.append(ipaddress.IPv4Network(dst, strict=False))
        except ValueError:
            continue
    return nets


def overlaps_any(net: ipaddress.IPv4Network, others: list[ipaddress.IPv4Network]) -> bool:
    return any(net.overlaps(o) for o in others)

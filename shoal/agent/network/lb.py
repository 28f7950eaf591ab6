"""VIP load balancing inside each client task's network namespace (Swarm's client-side LB, on nftables).

These kernels have no IPVS, so a VIP is a DNAT in the task's own netns, on the output hook: the
first packet of a connection to `VIP` picks a backend with `numgen inc mod N` and conntrack keeps
that choice for the connection's life. No userspace proxy is in the data path. The VIP comes from
the network's subnet, so the task's connected route already covers it (connect() needs a route
before the output hook runs; DNAT then re-routes to the backend).

Each change is one `nft -f -` transaction that replaces the whole table `ip shoal_lb`
(`table …; delete table …; table … { … }`), so a reader never sees a half-programmed table:

```
table ip shoal_lb {
  chain vip_nat { type nat hook output priority -100;
    ip daddr 10.9.0.100 tcp dport 80 dnat to numgen inc mod 3 map { 0 : 10.9.0.2, 1 : …, 2 : … }
    ip daddr 10.9.0.101 dnat to numgen inc mod 1 map { 0 : 10.9.0.7 }   # port None: every port
  }
  chain vip_empty { type filter hook output priority 0;
    ip daddr 10.9.0.102 meta l4proto tcp reject with tcp reset          # a service with 0 backends
    ip daddr 10.9.0.102 reject                                          # icmp port-unreachable
  }
}
```

DNAT keeps the destination port: backends listen on the service's target port.

**No backends**: connections to the VIP are rejected (TCP reset, ICMP port-unreachable otherwise),
so clients fail at once with "connection refused" instead of hanging until a timeout (IPVS with an
empty real-server list, Swarm's behaviour, drops silently).

**Drain** (a task leaving the set, e.g. on scale-down): the caller first reprograms every client
netns without that backend — from then on no new connection picks it — then waits `DRAIN_DELAY`
(Swarm waits its 2 s gossip-converge delay) or until its in-flight work is done, and only then stops
the container. Deleting the table does not touch conntrack: connections already DNATed to the
leaving backend keep their translation and finish normally.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Sequence
from dataclasses import dataclass, field

from shoal.agent.network.overlay import in_netns, run

TABLE = "shoal_lb"
DRAIN_DELAY = 2.0  # seconds between taking a backend out of every client and stopping it
PROTOCOLS = ("tcp", "udp", "sctp")


@dataclass(frozen=True)
class VipService:
    """One VIP: `protocol` and `port` (None: every port and protocol) → `backends` (task IPs)."""

    vip: str
    protocol: str = "tcp"
    port: int | None = None
    backends: Sequence[str] = field(default_factory=tuple)

    def __post_init__(self) -> None:
        ipaddress.IPv4Address(self.vip)
        for b in self.backends:
            ipaddress.IPv4Address(b)
        if self.protocol not in PROTOCOLS:
            raise ValueError(f"protocol {self.protocol!r} not one of {PROTOCOLS}")
        if self.port is not None and not 0 < self.port < 65536:
            raise ValueError(f"port {self.port} out of range")


def numgen_map(targets: Sequence[str]) -> str:
    """`numgen inc mod N map { 0 : t0, 1 : t1, … }` — round robin over `targets`."""
    elements = ", ".join(f"{i} : {t}" for i, t in enumerate(targets))
    return f"numgen inc mod {len(targets)} map {{ {elements} }}"


def _match(svc: VipService) -> str:
    if svc.port is not None:
        return f"ip daddr {svc.vip} {svc.protocol} dport {svc.port}"
    return f"ip daddr {svc.vip}"


def render(services: Sequence[VipService]) -> str:
    """The nft script that atomically replaces table `ip shoal_lb` with `services`."""
    nat, empty = [], []
    for svc in services:
        if svc.backends:
            nat.append(f"    {_match(svc)} dnat to {numgen_map(list(svc.backends))}")
        else:
            empty.append(f"    {_match(svc)} meta l4proto tcp reject with tcp reset")
            empty.append(f"    {_match(svc)} reject")
    body = "\n".join([
        "  chain vip_nat {", "    type nat hook output priority -100; policy accept;", *nat, "  }",
        "  chain vip_empty {", "    type filter hook output priority 0; policy accept;", *empty,
        "  }"])
    return f"table ip {TABLE}\ndelete table ip {TABLE}\ntable ip {TABLE} {{\n{body}\n}}\n"


async def program_vips(netns: str | None, services: Sequence[VipService]) -> None:
    """Replace the VIP table of `netns` (a task's netns; None: the caller's) in one transaction."""
    await run(in_netns(netns, ["nft", "-f", "-"]), stdin=render(services))


async def clear_vips(netns: str | None) -> None:
    """Remove the VIP table (a no-op when there is none)."""
    await run(in_netns(netns, ["nft", "-f", "-"]),
              stdin=f"table ip {TABLE}\ndelete table ip {TABLE}\n")

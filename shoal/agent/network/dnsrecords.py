"""The embedded DNS resolver's table of names: services, their tasks and aliases, per network.

Pure and in memory. The agent keeps it up to date from what the manager sends (a later step) and
`agent/network/dns.py` answers containers' queries from it. Names follow Docker's embedded
resolver (libnetwork `addServiceInfoToCluster`), on each network separately:

- `<service>` or a service alias: the service's VIP (endpoint mode `vip`), or the addresses of
  its running tasks (`dnsrr`);
- `tasks.<service>` or `tasks.<service alias>`: the addresses of the service's running tasks;
- a task alias (the agent passes the task's container name `svc.slot.id` as one): that task's
  address while it runs.

A container sees only the networks it is attached to (isolation). Lookups are case-insensitive and
ignore one trailing dot. A task counts only while `running` is true: the agent passes false while
it starts, stops or (once health checks exist) is unhealthy, as Docker adds backends on "healthy".

A service that is known on an attached network but has no address to give (no running task, or a
VIP not allocated yet) answers NOERROR with no records (`authoritative`, not `nxdomain`), so its
name never leaks to the upstream resolvers. When a name exists on several attached networks, the
first network in sorted id order that knows it answers (Docker takes the first endpoint too).

TTLs: `VIP_TTL` = 600 s (Docker's `respTTL`; a VIP lives as long as its service). Lists of task
addresses change whenever a task starts or stops, so they get `TASKS_TTL` = 5 s, shorter than
Docker's 600 s, which leaves clients with dead addresses for ten minutes. Addresses are IPv4 (the
overlays are IPv4-only); `10.0.0.5/24` forms are accepted and stored without the prefix.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Literal

EndpointMode = Literal["vip", "dnsrr"]
VIP_TTL = 600
TASKS_TTL = 5
_TASKS_PREFIX = "tasks."


@dataclass(frozen=True)
class Answer:
    """What the table says about one name.

    `authoritative`: the name is ours (even with no `addresses`); otherwise it is unknown on the
    asking container's networks, `nxdomain` is true and the server may forward it upstream.
    """

    addresses: tuple[str, ...]
    nxdomain: bool
    authoritative: bool
    ttl: int = 0


NOT_OURS = Answer((), nxdomain=True, authoritative=False)


def normalize(name: str) -> str:
    """Lower case without one trailing dot: the form every key of the table has."""
    name = name.strip().lower()
    return name[:-1] if name.endswith(".") else name


def _address(addr: str) -> str:
    ip = ipaddress.ip_interface(addr.strip()).ip
    if ip.version != 4:
        raise ValueError(f"not an IPv4 address: {addr!r}")
    return str(ip)


def _names(aliases: Iterable[str]) -> tuple[str, ...]:
    return tuple(dict.fromkeys(n for n in (normalize(a) for a in aliases) if n))


@dataclass(frozen=True)
class _Service:
    vip: str | None
    mode: EndpointMode
    aliases: tuple[str, ...]


@dataclass(frozen=True)
class _Task:
    service: str
    address: str
    running: bool
    aliases: tuple[str, ...]


@dataclass
class _Network:
    services: dict[str, _Service] = field(default_factory=dict)  # name -> service
    service_aliases: dict[str, str] = field(default_factory=dict)  # alias -> service name
    tasks: dict[str, _Task] = field(default_factory=dict)  # task id -> task
    by_service: dict[str, dict[str, _Task]] = field(default_factory=dict)  # service -> id -> task
    task_aliases: dict[str, dict[str, None]] = field(default_factory=dict)  # alias -> task ids

    def empty(self) -> bool:
        return not self.services and not self.tasks


def _running(tasks: dict[str, _Task] | None) -> tuple[str, ...]:
    if not tasks:
        return ()
    return tuple(sorted({t.address for t in tasks.values() if t.running},
                        key=ipaddress.IPv4Address))


class DnsRecords:
    """Services, tasks and aliases per network id; `lookup` answers one container's query."""

    def __init__(self) -> None:
        self._networks: dict[str, _Network] = {}

    # -- updates --------------------------------------------------------------------------------

    def set_service(self, network_id: str, name: str, *, vip: str | None,
                    endpoint_mode: EndpointMode = "vip", aliases: Iterable[str] = ()) -> None:
        """Add or replace a service on a network (its tasks are kept)."""
        if endpoint_mode not in ("vip", "dnsrr"):
            raise ValueError(f"endpoint mode must be vip or dnsrr, not {endpoint_mode!r}")
        key = normalize(name)
        if not key:
            raise ValueError("empty service name")
        service = _Service(_address(vip) if vip else None, endpoint_mode, _names(aliases))
        net = self._networks.setdefault(network_id, _Network())
        self._drop_service_aliases(net, key)
        net.services[key] = service
        for alias in service.aliases:
            net.service_aliases.setdefault(alias, key)

    def remove_service(self, network_id: str, name: str) -> None:
        """Forget a service on a network (its tasks stay until removed: they may still stop)."""
        net = self._networks.get(network_id)
        key = normalize(name)
        if net is None or key not in net.services:
            return
        self._drop_service_aliases(net, key)
        del net.services[key]
        self._prune(network_id)

    def set_task(self, network_id: str, service_name: str, task_id: str, address: str,
                 running: bool, aliases: Iterable[str] = ()) -> None:
        """Add or replace a task's address on a network; only running tasks are answered."""
        task = _Task(normalize(service_name), _address(address), running, _names(aliases))
        net = self._networks.setdefault(network_id, _Network())
        self._drop_task(net, task_id)
        net.tasks[task_id] = task
        net.by_service.setdefault(task.service, {})[task_id] = task
        for alias in task.aliases:
            net.task_aliases.setdefault(alias, {})[task_id] = None

    def set_task_running(self, network_id: str, task_id: str, running: bool) -> None:
        """Flip a known task in or out of DNS (started, stopped, healthy, unhealthy)."""
        net = self._networks.get(network_id)
        task = net.tasks.get(task_id) if net else None
        if net is not None and task is not None and task.running != running:
            self.set_task(network_id, task.service, task_id, task.address, running, task.aliases)

    def remove_task(self, network_id: str, task_id: str) -> None:
        net = self._networks.get(network_id)
        if net is not None:
            self._drop_task(net, task_id)
            self._prune(network_id)

    def remove_network(self, network_id: str) -> None:
        self._networks.pop(network_id, None)

    def networks(self) -> set[str]:
        return set(self._networks)

    # -- queries --------------------------------------------------------------------------------

    def lookup(self, networks: Iterable[str], qname: str) -> Answer:
        """Answer `qname` for a container attached to `networks`."""
        name = normalize(qname)
        for network_id in sorted(set(networks)):
            net = self._networks.get(network_id)
            if net is not None and name:
                answer = self._lookup_one(net, name)
                if answer is not None:
                    return answer
        return NOT_OURS

    @staticmethod
    def _lookup_one(net: _Network, name: str) -> Answer | None:
        service_name = name if name in net.services else net.service_aliases.get(name)
        if service_name is not None:
            service = net.services[service_name]
            if service.mode == "vip":
                return Answer((service.vip,) if service.vip else (), False, True, VIP_TTL)
            return Answer(_running(net.by_service.get(service_name)), False, True, TASKS_TTL)
        if name.startswith(_TASKS_PREFIX):
            base = name[len(_TASKS_PREFIX):]
            target = base if base in net.services or base in net.by_service else \
                net.service_aliases.get(base)
            if target is not None:
                return Answer(_running(net.by_service.get(target)), False, True, TASKS_TTL)
        ids = net.task_aliases.get(name)
        if ids:
            tasks = {i: net.tasks[i] for i in ids}
            return Answer(_running(tasks), False, True, TASKS_TTL)
        return None

    # -- internals ------------------------------------------------------------------------------

    @staticmethod
    def _drop_service_aliases(net: _Network, key: str) -> None:
        old = net.services.get(key)
        for alias in old.aliases if old else ():
            if net.service_aliases.get(alias) == key:
                del net.service_aliases[alias]
                # another service may claim the same alias: give it back the name
                for other, svc in net.services.items():
                    if other != key and alias in svc.aliases:
                        net.service_aliases[alias] = other
                        break

    @staticmethod
    def _drop_task(net: _Network, task_id: str) -> None:
        old = net.tasks.pop(task_id, None)
        if old is None:
            return
        siblings = net.by_service.get(old.service, {})
        siblings.pop(task_id, None)
        if not siblings:
            net.by_service.pop(old.service, None)
        for alias in old.aliases:
            holders = net.task_aliases.get(alias, {})
            holders.pop(task_id, None)
            if not holders:
                net.task_aliases.pop(alias, None)

    def _prune(self, network_id: str) -> None:
        net = self._networks.get(network_id)
        if net is not None and net.empty():
            del self._networks[network_id]

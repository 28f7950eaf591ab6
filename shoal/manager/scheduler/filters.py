"""The scheduler's filter pipeline and its explanations (swarmkit's pipeline.go and filter.go).

Used by `pipeline.schedule`. Each filter checks one concern of a task group's `Requirements`
against a NodeInfo and, when it rejects the node, names a *reason*; the reasons of all rejected
nodes are counted and `explain` turns the counts into Swarm's message:
    no suitable node (1 node not available for new tasks; 2 nodes have insufficient memory)
A node is charged to the first filter that rejects it (the pipeline stops there), so the counts
add up to the number of rejected nodes. Reasons are listed in pipeline order.

Filters split into *static* ones (readiness, constraints, platform: they do not change while a
group is being placed) and *dynamic* ones (resources, host ports, max replicas), which are
re-checked on a node after each placement on it.

Host ports (swarmkit's HostPortFilter): a task of a service publishing ports in host mode cannot go
to a node where an active task (of any service, its own included) already publishes the same
(published port, protocol) in host mode. Tasks do not carry their service's ports, so the caller
gives `Requirements.of` a table service ID -> `host_ports_of(service)`; a node's ports in use are
those of the services it counts tasks of (`NodeInfo.service_counts`). Without a table (the default)
the filter passes every node.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from types import MappingProxyType

from shoal.api.types import Platform, Service, Task
from shoal.manager.scheduler.constraints import (
    Constraint,
    normalise_arch,
    parse_constraint,
    satisfies_all,
)
from shoal.manager.scheduler.nodeinfo import NodeInfo, task_reservations

NOT_READY = "not-ready"
CONSTRAINTS = "constraints"
PLATFORM = "platform"
CPU = "cpu"
MEMORY = "memory"
HOST_PORT = "host-port"
MAX_REPLICAS = "max-replicas"

# Pipeline order: the order in which filters run and in which `explain` lists reasons.
REASON_ORDER = (NOT_READY, CPU, MEMORY, CONSTRAINTS, PLATFORM, HOST_PORT, MAX_REPLICAS)

HostPort = tuple[int, str]  # (published port, protocol)
HostPortTable = Mapping[str, frozenset[HostPort]]  # service ID -> its host-mode published ports
_NO_PORTS: HostPortTable = MappingProxyType({})


def host_ports_of(service: Service) -> frozenset[HostPort]:
    """The host-mode published ports of a service: its Endpoint's ports (what was allocated),
    else its spec's."""
    endpoint = service.endpoint
    ports = endpoint.ports if endpoint is not None and endpoint.ports is not None else None
    if ports is None and service.spec.endpoint_spec is not None:
        ports = service.spec.endpoint_spec.ports
    return frozenset((p.published_port, p.protocol or "tcp") for p in ports or ()
                     if p.publish_mode == "host" and p.published_port)


@dataclass(frozen=True, slots=True)
class Requirements:
    """What every task of a group (same service, same spec) needs from a node."""

    service_id: str
    nano_cpus: int
    memory_bytes: int
    constraints: tuple[Constraint, ...]
    constraints_valid: bool
    max_replicas: int
    platforms: tuple[Platform, ...]
    spread_descriptors: tuple[str, ...]
    host_ports: frozenset[HostPort] = frozenset()
    port_table: HostPortTable = field(default_factory=lambda: _NO_PORTS, compare=False, hash=False,
                                      repr=False)

    @classmethod
    def of(cls, task: Task, port_table: HostPortTable | None = None) -> Requirements:
        placement = task.spec.placement
        cpu, mem = task_reservations(task)
        constraints: list[Constraint] = []
        valid = True
        for text in (placement.constraints or []) if placement else []:
            try:
                constraints.append(parse_constraint(text))
            except ValueError:
                valid = False
        preferences = (placement.preferences or []) if placement else []
        return cls(
            service_id=task.service_id,
            nano_cpus=cpu,
            memory_bytes=mem,
            constraints=tuple(constraints),
            constraints_valid=valid,
            max_replicas=placement.max_replicas if placement else 0,
            platforms=tuple((placement.platforms or []) if placement else []),
            spread_descriptors=tuple(p.spread.spread_descriptor for p in preferences
                                     if p.spread and p.spread.spread_descriptor),
            host_ports=(port_table or _NO_PORTS).get(task.service_id, frozenset()),
            port_table=port_table or _NO_PORTS,
        )


def check_ready(req: Requirements, info: NodeInfo) -> str | None:
    node = info.node
    available = node.spec.availability in ("", "active")
    return None if node.status.state == "ready" and available else NOT_READY


def check_constraints(req: Requirements, info: NodeInfo) -> str | None:
    if not req.constraints_valid:
        return CONSTRAINTS
    return None if satisfies_all(info.node, req.constraints) else CONSTRAINTS


def check_platform(req: Requirements, info: NodeInfo) -> str | None:
    if not req.platforms:
        return None
    platform = info.node.description.platform
    os_, arch = platform.os.lower(), normalise_arch(platform.architecture)
    for wanted in req.platforms:
        if (not wanted.os or wanted.os.lower() == os_) and (
                not wanted.architecture or normalise_arch(wanted.architecture) == arch):
            return None
    return PLATFORM


def check_resources(req: Requirements, info: NodeInfo) -> str | None:
    if req.nano_cpus > info.available_nano_cpus:
        return CPU
    if req.memory_bytes > info.available_memory_bytes:
        return MEMORY
    return None


def check_host_ports(req: Requirements, info: NodeInfo) -> str | None:
    if not req.host_ports:
        return None
    for service_id in info.service_counts:
        if req.host_ports & req.port_table.get(service_id, frozenset()):
            return HOST_PORT
    return None


def check_max_replicas(req: Requirements, info: NodeInfo) -> str | None:
    if req.max_replicas and info.service_counts.get(req.service_id, 0) >= req.max_replicas:
        return MAX_REPLICAS
    return None


def check_static(req: Requirements, info: NodeInfo) -> str | None:
    """Readiness, constraints and platform: the first reason this node is refused, or None."""
    return check_ready(req, info) or check_constraints(req, info) or check_platform(req, info)


def check_dynamic(req: Requirements, info: NodeInfo) -> str | None:
    """Resources, host ports and max replicas, which change as tasks are placed on the node."""
    return check_resources(req, info) or check_host_ports(req, info) or check_max_replicas(req, info)


def check_all(req: Requirements, info: NodeInfo) -> str | None:
    """The whole pipeline, in REASON_ORDER: ready, resources, constraints, platform, host ports,
    max replicas."""
    return (check_ready(req, info) or check_resources(req, info) or check_constraints(req, info)
            or check_platform(req, info) or check_host_ports(req, info) or check_max_replicas(req, info))


def _nodes(count: int) -> str:
    return "1 node" if count == 1 else f"{count} nodes"


def _has(count: int) -> str:
    return f"{_nodes(count)} {'has' if count == 1 else 'have'}"


def explain_reason(reason: str, count: int) -> str:
    """One reason's part of the message, pluralised for `count` nodes."""
    if reason == NOT_READY:
        return f"{_nodes(count)} not available for new tasks"
    if reason == CPU:
        return f"{_has(count)} insufficient cpu"
    if reason == MEMORY:
        return f"{_has(count)} insufficient memory"
    if reason == CONSTRAINTS:
        return f"scheduling constraints not satisfied on {_nodes(count)}"
    if reason == PLATFORM:
        return f"unsupported platform on {_nodes(count)}"
    if reason == HOST_PORT:
        return f"host-mode port already in use on {_nodes(count)}"
    if reason == MAX_REPLICAS:
        return "max replicas per node limit exceed"
    return f"{_nodes(count)} rejected ({reason})"


def explain(counts: Mapping[str, int]) -> str:
    """Swarm's "no suitable node (...)" message for per-reason counts of rejected nodes."""
    parts = [explain_reason(r, counts[r]) for r in REASON_ORDER if counts.get(r)]
    parts += [explain_reason(r, n) for r, n in sorted(counts.items()) if r not in REASON_ORDER and n]
    return f"no suitable node ({'; '.join(parts)})" if parts else "no suitable node"

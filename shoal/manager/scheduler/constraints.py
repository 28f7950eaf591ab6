"""Placement constraints and spread descriptors evaluated against a node (swarmkit's constraint.go).

Called by the scheduler's ConstraintFilter and by the preference tree. The API server already
refuses malformed constraints, so a constraint that fails to parse here (an object written before
validation tightened) is treated as satisfied by no node rather than crashing the scheduler.

Keys: node.id, node.hostname, node.role, node.platform.os, node.platform.arch, node.labels.X,
engine.labels.X. Values compare case-insensitively, as swarmkit's `strings.EqualFold`. A missing
label never equals anything, so `node.labels.x!=y` holds on a node without label x.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from shoal.api.types import Node

_KEY = re.compile(r"^[a-zA-Z_][a-zA-Z0-9\-_.]*$")
# Docker reports the kernel's machine name; constraints are written with Go's GOARCH names.
_ARCH_ALIASES = {"x86_64": "amd64", "aarch64": "arm64", "armv7l": "arm", "i386": "386", "i686": "386"}


@dataclass(frozen=True, slots=True)
class Constraint:
    key: str
    op: str  # "==" | "!="
    value: str


def parse_constraint(text: str) -> Constraint:
    """`"node.labels.zone == a"` -> Constraint("node.labels.zone", "==", "a"); ValueError if malformed."""
    for op in ("==", "!="):
        key, sep, value = text.partition(op)
        if sep:
            key, value = key.strip(), value.strip()
            if not _KEY.match(key) or not value or "==" in value or "!=" in value:
                break
            return Constraint(key, op, value)
    raise ValueError(f"invalid constraint: {text!r}")


def normalise_arch(arch: str) -> str:
    return _ARCH_ALIASES.get(arch.lower(), arch.lower())


def node_attribute(node: Node, key: str) -> str | None:
    """The value of a constraint/spread key on `node`; None when the node lacks it (a missing label)."""
    lowered = key.lower()
    desc = node.description
    if lowered == "node.id":
        return node.id
    if lowered == "node.hostname":
        return desc.hostname
    if lowered == "node.role":
        return node.spec.role
    if lowered == "node.platform.os":
        return desc.platform.os
    if lowered == "node.platform.arch":
        return normalise_arch(desc.platform.architecture)
    for prefix, labels in (("node.labels.", node.spec.labels), ("engine.labels.", desc.engine.labels)):
        if lowered.startswith(prefix):
            # Label names keep their case; only the prefix is case-insensitive.
            return (labels or {}).get(key[len(prefix):])
    return None


def satisfies(node: Node, constraint: Constraint) -> bool:
    actual = node_attribute(node, constraint.key)
    expected = constraint.value
    if constraint.key.lower() == "node.platform.arch":
        expected = normalise_arch(expected)
    equal = actual is not None and actual.casefold() == expected.casefold()
    return equal if constraint.op == "==" else not equal


def satisfies_all(node: Node, constraints: tuple[Constraint, ...]) -> bool:
    return all(satisfies(node, c) for c in constraints)

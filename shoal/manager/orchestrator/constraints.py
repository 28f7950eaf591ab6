"""Placement constraints evaluated against a node, for the global orchestrator.

The global orchestrator calls `node_matches` to decide which nodes get a task (the scheduler has its
own filter; the two must not import each other, so this small matcher lives here). The parsing and
the comparison rule (case-insensitive, `==`/`!=`) are `shoal.api.validation`'s; this module only
reads a node's attribute for a key, as swarmkit's manager/constraint NodeMatches does: a missing
label reads as "" (so `node.labels.x!=y` matches a node without the label).
"""

from __future__ import annotations

from collections.abc import Sequence

from shoal.api.errors import InvalidArgument
from shoal.api.types import Node
from shoal.api.validation import parse_constraint


def node_attribute(node: Node, key: str) -> str | None:
    """The node's value for a normalised constraint key; None for a key Shoal does not know."""
    if key == "node.id":
        return node.id
    if key == "node.hostname":
        return node.description.hostname
    if key == "node.role":
        return node.spec.role
    if key == "node.platform.os":
        return node.description.platform.os
    if key == "node.platform.arch":
        return node.description.platform.architecture
    if key.startswith("node.labels."):
        return (node.spec.labels or {}).get(key[len("node.labels."):], "")
    if key.startswith("engine.labels."):
        return (node.description.engine.labels or {}).get(key[len("engine.labels."):], "")
    return None


def node_matches(node: Node, constraints: Sequence[str] | None) -> bool:
    """Whether `node` satisfies every constraint. An unparsable one matches no node."""
    for text in constraints or ():
        try:
            constraint = parse_constraint(text)
        except InvalidArgument:
            return False  # validated on write; a bad stored spec must not place tasks anywhere
        actual = node_attribute(node, constraint.key)
        if actual is None or not constraint.matches(actual):
            return False
    return True

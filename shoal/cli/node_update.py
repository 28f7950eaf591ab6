"""`shoal node update|promote|demote`: GET the node, change its spec, POST it back with its version.

Registered on the `node` group by `shoal.cli.node`. Flag values are checked before any request
(`invalid argument "x" for "--flag" flag: ...`, exit 1); `apply_node_update` is pure.
"""

from __future__ import annotations

import copy
from collections.abc import Callable
from typing import Any

import click

from shoal.cli.client import App, CliError
from shoal.cli.node_inspect import resolve_node
from shoal.cli.service_spec import convert, one_of

AVAILABILITIES = ("active", "pause", "drain")
ROLES = ("worker", "manager")
_WHITESPACE = " \t\n\v\f\r"


class NoRoleChange(Exception):
    """promote/demote of a node that already has the role: nothing to send."""


def validate_label(text: str) -> str:
    """docker's opts.ValidateLabel: `key[=value]`, the key non-empty and without whitespace."""
    key = text.partition("=")[0].strip()
    if not key:
        raise ValueError(f"invalid label '{text}': empty name")
    if any(ch in key for ch in _WHITESPACE):
        raise ValueError(f"label '{key}' contains whitespaces")
    return text


def check_update_flags(availability: str | None, role: str | None, label_add: tuple[str, ...]) -> None:
    if availability is not None:
        convert(availability, "--availability", one_of(AVAILABILITIES))
    if role is not None:
        convert(role, "--role", one_of(ROLES))
    for label in label_add:
        convert(label, "--label-add", validate_label)


def apply_node_update(spec: dict[str, Any], availability: str | None, role: str | None,
                      label_add: tuple[str, ...], label_rm: tuple[str, ...]) -> dict[str, Any]:
    """docker's mergeNodeUpdate: role, availability, then labels added, then removed."""
    out = copy.deepcopy(spec)
    if role is not None:
        out["Role"] = role
    if availability is not None:
        out["Availability"] = availability
    if label_add or label_rm:
        labels = dict(out.get("Labels") or {})
        for item in label_add:
            key, _, value = item.partition("=")
            labels[key] = value
        for key in label_rm:
            if key not in labels:
                raise CliError(f"key {key} doesn't exist in node's labels")
            del labels[key]
        out["Labels"] = labels
    return out


def update_nodes(app: App, refs: tuple[str, ...], merge: Callable[[dict[str, Any]], dict[str, Any]],
                 success: Callable[[str], None]) -> None:
    """docker's updateNodes: per node GET, merge, POST ?version=N; stops at the first error."""
    for ref in refs:
        n = app.client.get(f"/nodes/{resolve_node(app, ref)}")
        try:
            spec = merge(n)
        except NoRoleChange:
            continue
        app.client.post(f"/nodes/{n['ID']}/update", {"version": n["Version"]["Index"]}, spec)
        success(ref)


@click.command("update")
@click.option("--availability", help="Availability of the node (\"active\", \"pause\", \"drain\")")
@click.option("--label-add", multiple=True, help="Add or update a node label (key=value)")
@click.option("--label-rm", multiple=True, help="Remove a node label if exists")
@click.option("--role", help="Role of the node (\"worker\", \"manager\")")
@click.argument("ref")
@click.pass_obj
def update(app: App, availability: str | None, label_add: tuple[str, ...], label_rm: tuple[str, ...],
           role: str | None, ref: str) -> None:
    """Update a node."""
    check_update_flags(availability, role, label_add)

    def merge(n: dict[str, Any]) -> dict[str, Any]:
        return apply_node_update(n.get("Spec") or {}, availability, role, label_add, label_rm)

    update_nodes(app, (ref,), merge, click.echo)


def _change_role(role: str) -> Callable[[dict[str, Any]], dict[str, Any]]:
    def merge(n: dict[str, Any]) -> dict[str, Any]:
        spec = copy.deepcopy(n.get("Spec") or {})
        if spec.get("Role") == role:
            click.echo(f"Node {n['ID']} is already a {role}.")
            raise NoRoleChange
        spec["Role"] = role
        return spec
    return merge


@click.command("promote")
@click.argument("refs", nargs=-1, required=True)
@click.pass_obj
def promote(app: App, refs: tuple[str, ...]) -> None:
    """Promote one or more nodes to manager in the swarm."""
    update_nodes(app, refs, _change_role("manager"),
                 lambda ref: click.echo(f"Node {ref} promoted to a manager in the swarm."))


@click.command("demote")
@click.argument("refs", nargs=-1, required=True)
@click.pass_obj
def demote(app: App, refs: tuple[str, ...]) -> None:
    """Demote one or more nodes from manager in the swarm."""
    update_nodes(app, refs, _change_role("worker"),
                 lambda ref: click.echo(f"Manager {ref} demoted in the swarm."))

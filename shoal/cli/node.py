"""`shoal node ls|ps|rm` and the `node` group, printed as docker prints them.

`shoal.cli.main` adds the group to the root; `inspect` (node_inspect) and `update`, `promote`,
`demote` (node_update) are registered here. `ls_rows` is pure (canned JSON in, formatter rows
out) so that tests can check the self marker, sorting and capitalisation without a daemon.
"""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence
from typing import Any

import click

from shoal.cli.client import App, CliError, DaemonError, Params, encode_filters, parse_filter_flags
from shoal.cli.format import pretty_state, print_rows
from shoal.cli.node_inspect import inspect, resolve_node
from shoal.cli.node_update import demote, promote, update
from shoal.cli.service_ps import PS_HEADERS, PS_TABLE, node_name, ps_rows

LS_HEADERS = {"ID": "ID", "Self": "", "SelfMark": " ", "Hostname": "HOSTNAME", "Status": "STATUS",
              "Availability": "AVAILABILITY", "ManagerStatus": "MANAGER STATUS",
              "EngineVersion": "ENGINE VERSION", "TLSStatus": "TLS STATUS"}
LS_TABLE = ("{{.ID}} {{.SelfMark}}\t{{.Hostname}}\t{{.Status}}\t{{.Availability}}\t{{.ManagerStatus}}"
            "\t{{.EngineVersion}}")
_DIGITS = re.compile(r"(\d+)")


@click.group("node")
def node() -> None:
    """Manage Swarm nodes."""


def natural_key(text: str) -> list[tuple[int, int | str]]:
    """docker's sortorder.NaturalLess: runs of digits compare as numbers."""
    return [(1, int(part)) if part.isdigit() else (0, part) for part in _DIGITS.split(text) if part]


def manager_status(n: Mapping[str, Any]) -> str:
    status = n.get("ManagerStatus")
    if not status:
        return ""
    return "Leader" if status.get("Leader") else pretty_state(str(status.get("Reachability") or ""))


def tls_status(n: Mapping[str, Any], info: Mapping[str, Any]) -> str:
    cluster_tls = ((info.get("Swarm") or {}).get("Cluster") or {}).get("TLSInfo") or {}
    node_tls = (n.get("Description") or {}).get("TLSInfo") or {}
    if not any(cluster_tls.values()) or not any(node_tls.values()):
        return "Unknown"
    return "Ready" if node_tls == cluster_tls else "Needs Rotation"


def ls_rows(nodes: Sequence[Mapping[str, Any]], info: Mapping[str, Any]) -> list[dict[str, Any]]:
    """Rows sorted by hostname (naturally), fields as docker's node formatter names them."""
    self_id = (info.get("Swarm") or {}).get("NodeID", "")
    ordered = sorted(nodes, key=lambda n: natural_key((n.get("Description") or {}).get("Hostname", "")))
    rows = []
    for n in ordered:
        desc = n.get("Description") or {}
        rows.append({
            "ID": n.get("ID", ""),
            "Self": bool(self_id) and n.get("ID") == self_id,
            "Hostname": desc.get("Hostname", ""),
            "Status": pretty_state(str((n.get("Status") or {}).get("State", ""))),
            "Availability": pretty_state(str((n.get("Spec") or {}).get("Availability", ""))),
            "ManagerStatus": manager_status(n),
            "EngineVersion": (desc.get("Engine") or {}).get("EngineVersion", ""),
            "TLSStatus": tls_status(n, info),
        })
    return rows


def with_self_mark(rows: Sequence[Mapping[str, Any]]) -> list[dict[str, Any]]:
    """The default table's `ID *` column (docker: `{{.ID}} {{if .Self}}*{{else}} {{end}}`)."""
    return [{**row, "SelfMark": "*" if row["Self"] else " "} for row in rows]


@node.command("ls")
@click.option("-f", "--filter", "filters", multiple=True, help="Filter output based on conditions provided")
@click.option("--format", "fmt", help="Format output using a custom template ('table', 'json', ...)")
@click.option("-q", "--quiet", is_flag=True, help="Only display IDs")
@click.pass_obj
def ls(app: App, filters: tuple[str, ...], fmt: str | None, quiet: bool) -> None:
    """List nodes in the swarm."""
    grouped = parse_filter_flags(filters)
    params: Params | None = {"filters": encode_filters(grouped)} if grouped else None
    nodes = app.client.get("/nodes", params) or []
    info = app.client.get("/info") if nodes and not quiet else {}
    rows = ls_rows(nodes, info or {})
    if not fmt or fmt == "table":
        rows = with_self_mark(rows)
    print_rows(rows, LS_HEADERS, LS_TABLE, fmt, quiet_field="ID" if quiet else None)


def _service_names(app: App, tasks: Sequence[Mapping[str, Any]]) -> dict[str, str]:
    names: dict[str, str] = {}
    for service_id in dict.fromkeys(str(t.get("ServiceID", "")) for t in tasks):
        try:
            svc = app.client.get(f"/services/{service_id}", {"insertDefaults": "false"})
            names[service_id] = (svc.get("Spec") or {}).get("Name") or service_id
        except DaemonError:
            names[service_id] = service_id
    return names


@node.command("ps")
@click.option("-f", "--filter", "filters", multiple=True, help="Filter output based on conditions provided")
@click.option("--format", "fmt", help="Pretty-print tasks using a Go template ('table', 'json', ...)")
@click.option("-q", "--quiet", is_flag=True, help="Only display task IDs")
@click.option("--no-trunc", is_flag=True, help="Do not truncate output")
@click.argument("refs", nargs=-1)
@click.pass_obj
def ps(app: App, filters: tuple[str, ...], fmt: str | None, quiet: bool, no_trunc: bool,
       refs: tuple[str, ...]) -> None:
    """List tasks running on one or more nodes, defaults to current node."""
    grouped = parse_filter_flags(filters)
    tasks: list[dict[str, Any]] = []
    nodes: dict[str, str] = {}
    errors: list[str] = []
    for ref in refs or ("self",):
        try:
            n = app.client.get(f"/nodes/{resolve_node(app, ref)}")
        except DaemonError as exc:
            errors.append(exc.message)
            continue
        nodes[n["ID"]] = node_name(n)
        query = {**grouped, "node": [n["ID"]]}
        tasks += app.client.get("/tasks", {"filters": encode_filters(query)}) or []
    if tasks or not errors:
        names = {} if quiet else _service_names(app, tasks)
        rows = ps_rows(tasks, names, nodes, trunc=not no_trunc)
        print_rows(rows, PS_HEADERS, PS_TABLE, fmt, quiet_field="ID" if quiet else None)
    if errors:
        raise CliError("\n".join(errors))


@node.command("rm")
@click.option("-f", "--force", is_flag=True, help="Force remove a node from the swarm")
@click.argument("refs", nargs=-1, required=True)
@click.pass_obj
def rm(app: App, force: bool, refs: tuple[str, ...]) -> None:
    """Remove one or more nodes from the swarm."""
    errors: list[str] = []
    for ref in refs:
        try:
            app.client.delete(f"/nodes/{ref}", {"force": 1} if force else None)
        except DaemonError as exc:
            errors.append(exc.message)
            continue
        click.echo(ref)
    if errors:
        raise CliError("\n".join(errors))


for _command in (inspect, update, promote, demote):
    node.add_command(_command)

"""`shoal service ps SERVICE...`: the tasks of services, as docker's task formatter prints them.

Registered on the `service` group by `shoal.cli.service`. `ps_rows` is pure (canned JSON in,
formatter rows out) so that tests can check names, history rows and states without a daemon.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Mapping
from typing import Any

import click

from shoal.cli.client import App, encode_filters, parse_filter_flags
from shoal.cli.format import ago, ellipsis, pretty_state, print_rows, strip_digest

PS_HEADERS = {"ID": "ID", "Name": "NAME", "Image": "IMAGE", "Node": "NODE", "DesiredState": "DESIRED STATE",
              "CurrentState": "CURRENT STATE", "Error": "ERROR", "Ports": "PORTS"}
PS_TABLE = ("{{.ID}}\t{{.Name}}\t{{.Image}}\t{{.Node}}\t{{.DesiredState}}\t{{.CurrentState}}\t{{.Error}}"
            "\t{{.Ports}}")
MAX_ERR_LENGTH = 30


def node_name(node: Mapping[str, Any]) -> str:
    """docker's idresolver: Spec.Name, else Description.Hostname, else the ID."""
    return ((node.get("Spec") or {}).get("Name") or (node.get("Description") or {}).get("Hostname")
            or str(node.get("ID", "")))


def task_ports(task: Mapping[str, Any]) -> str:
    """docker's task PORTS: every port the task published (host mode), comma-joined, no space."""
    ports = ((task.get("Status") or {}).get("PortStatus") or {}).get("Ports") or []
    return ",".join(f"*:{p.get('PublishedPort', 0)}->{p.get('TargetPort', 0)}/{p.get('Protocol', 'tcp')}"
                     for p in ports)


def _sort_key(task: Mapping[str, Any], service_names: Mapping[str, str]) -> tuple[str, int, str]:
    return (service_names.get(task.get("ServiceID", ""), ""), int(task.get("Slot", 0)),
            "" if task.get("Slot") else str(task.get("NodeID", "")))


def _display_name(task: Mapping[str, Any], service_names: Mapping[str, str]) -> str:
    base = service_names.get(task.get("ServiceID", ""), task.get("ServiceID", ""))
    return f"{base}.{task['Slot']}" if task.get("Slot") else f"{base}.{task.get('NodeID', '')}"


def _row(task: Mapping[str, Any], name: str, nodes: Mapping[str, str], now: dt.datetime,
         trunc: bool) -> dict[str, str]:
    status = task.get("Status") or {}
    image = ((task.get("Spec") or {}).get("ContainerSpec") or {}).get("Image", "")
    err = status.get("Err") or ""
    if trunc:
        err = ellipsis(err, MAX_ERR_LENGTH)
    since = ago(status.get("Timestamp"), now)
    return {
        "ID": task["ID"][:12] if trunc else task["ID"],
        "Name": name,
        "Image": strip_digest(image) if trunc else image,
        "Node": nodes.get(task.get("NodeID", ""), task.get("NodeID", "")),
        "DesiredState": pretty_state(task.get("DesiredState", "")),
        "CurrentState": f"{pretty_state(status.get('State', ''))} {since.lower()} ago" if since else
        pretty_state(status.get("State", "")),
        "Error": f'"{err}"' if err else "",
        "Ports": task_ports(task),
    }


def ps_rows(tasks: list[dict[str, Any]], service_names: Mapping[str, str], nodes: Mapping[str, str],
            now: dt.datetime | None = None, trunc: bool = True) -> list[dict[str, str]]:
    """Rows sorted by service and slot, newest first; older tasks of a slot as ` \\_ web.1`."""
    now = now or dt.datetime.now(dt.UTC)
    newest_first = sorted(tasks, key=lambda t: str(t.get("CreatedAt", "")), reverse=True)
    ordered = sorted(newest_first, key=lambda t: _sort_key(t, service_names))
    rows, previous = [], None
    for task in ordered:
        name = _display_name(task, service_names)
        shown = f" \\_ {name}" if name == previous else name
        previous = name
        rows.append(_row(task, shown, nodes, now, trunc))
    return rows


@click.command("ps")
@click.option("-f", "--filter", "filters", multiple=True, help="Filter output based on conditions provided")
@click.option("--format", "fmt", help="Pretty-print tasks using a Go template ('table', 'json', ...)")
@click.option("-q", "--quiet", is_flag=True, help="Only display task IDs")
@click.option("--no-trunc", is_flag=True, help="Do not truncate output")
@click.argument("names", nargs=-1, required=True)
@click.pass_obj
def ps(app: App, filters: tuple[str, ...], fmt: str | None, quiet: bool, no_trunc: bool,
       names: tuple[str, ...]) -> None:
    """List the tasks of one or more services."""
    grouped = parse_filter_flags(filters)
    service_names: dict[str, str] = {}
    for name in names:
        svc = app.client.get(f"/services/{name}", {"insertDefaults": "false"})
        service_names[svc["ID"]] = svc["Spec"].get("Name", "")
    grouped["service"] = list(service_names)
    tasks = app.client.get("/tasks", {"filters": encode_filters(grouped)}) or []
    nodes = {} if quiet else {n["ID"]: node_name(n) for n in app.client.get("/nodes") or []}
    rows = ps_rows(tasks, service_names, nodes, trunc=not no_trunc)
    print_rows(rows, PS_HEADERS, PS_TABLE, fmt, quiet_field="ID" if quiet else None)

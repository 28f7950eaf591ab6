"""`shoal service ...`: the click group and its small verbs (ls, inspect, scale, rm, rollback).

`shoal.cli.main` adds this group to the root; the larger verbs live in their own modules
(service_create, service_update, service_ps, service_logs) and are registered here.
"""

from __future__ import annotations

import re
from typing import Any

import click

from shoal.cli.client import App, CliError, DaemonError, encode_filters, parse_filter_flags
from shoal.cli.endpoint import ports_text
from shoal.cli.format import print_inspect, print_rows, strip_digest, truncate_id
from shoal.cli.service_create import create, finish, timeout_ns, watch_flags, with_flags
from shoal.cli.service_inspect import pretty
from shoal.cli.service_logs import logs
from shoal.cli.service_ps import ps
from shoal.cli.service_spec import parse_uint
from shoal.cli.service_update import update

LS_HEADERS = {"ID": "ID", "Name": "NAME", "Mode": "MODE", "Replicas": "REPLICAS", "Image": "IMAGE",
              "Ports": "PORTS"}
LS_TABLE = "{{.ID}}\t{{.Name}}\t{{.Mode}}\t{{.Replicas}}\t{{.Image}}\t{{.Ports}}"
_SCALE = re.compile(r"^([^=]+)=(.*)$")


@click.group("service")
def service() -> None:
    """Manage Swarm services."""


def mode_name(mode: dict[str, Any]) -> str:
    for key, name in (("Replicated", "replicated"), ("Global", "global"),
                      ("ReplicatedJob", "replicated job"), ("GlobalJob", "global job")):
        if key in mode:
            return name
    return "replicated"


def replicas_text(svc: dict[str, Any], counts: dict[str, tuple[int, int]]) -> str:
    status = svc.get("ServiceStatus")
    running, desired = ((status.get("RunningTasks", 0), status.get("DesiredTasks", 0)) if status
                        else counts.get(svc["ID"], (0, 0)))
    text = f"{running}/{desired}"
    max_per_node = ((svc["Spec"].get("TaskTemplate") or {}).get("Placement") or {}).get("MaxReplicas")
    return f"{text} (max {max_per_node} per node)" if max_per_node else text


def task_counts(app: App) -> dict[str, tuple[int, int]]:
    """The fallback when the server sends no ServiceStatus: count running/desired tasks."""
    counts: dict[str, tuple[int, int]] = {}
    for task in app.client.get("/tasks") or []:
        running, desired = counts.get(task.get("ServiceID", ""), (0, 0))
        is_running = (task.get("Status") or {}).get("State") == "running"
        wants = task.get("DesiredState") == "running"
        counts[task.get("ServiceID", "")] = (running + int(is_running), desired + int(wants))
    return counts


def service_row(svc: dict[str, Any], counts: dict[str, tuple[int, int]]) -> dict[str, str]:
    spec = svc.get("Spec") or {}
    image = ((spec.get("TaskTemplate") or {}).get("ContainerSpec") or {}).get("Image", "")
    return {"ID": truncate_id(svc["ID"]), "Name": spec.get("Name", ""),
            "Mode": mode_name(spec.get("Mode") or {}), "Replicas": replicas_text(svc, counts),
            "Image": strip_digest(image), "Ports": ports_text((svc.get("Endpoint") or {}).get("Ports") or [])}


@service.command("ls")
@click.option("-f", "--filter", "filters", multiple=True, help="Filter output based on conditions provided")
@click.option("--format", "fmt", help="Format output: 'table', 'json' or a Go template")
@click.option("-q", "--quiet", is_flag=True, help="Only display IDs")
@click.pass_obj
def ls(app: App, filters: tuple[str, ...], fmt: str | None, quiet: bool) -> None:
    """List services."""
    params: dict[str, str | int] = {}
    grouped = parse_filter_flags(filters)
    if grouped:
        params["filters"] = encode_filters(grouped)
    if not quiet:
        params["status"] = "true"
    services = sorted(app.client.get("/services", params) or [], key=lambda s: s["Spec"].get("Name", ""))
    if quiet:
        for svc in services:
            click.echo(svc["ID"])
        return
    counts = task_counts(app) if any("ServiceStatus" not in s for s in services) else {}
    print_rows([service_row(s, counts) for s in services], LS_HEADERS, LS_TABLE, fmt)


@service.command("inspect")
@click.option("-f", "--format", "fmt", help="Format output using a custom template")
@click.option("--pretty", "pretty_flag", is_flag=True, help="Print a human friendly summary")
@click.argument("names", nargs=-1, required=True)
@click.pass_obj
def inspect(app: App, fmt: str | None, pretty_flag: bool, names: tuple[str, ...]) -> None:
    """Display detailed information on one or more services."""
    found, missing = [], []
    for name in names:
        try:
            found.append(app.client.get(f"/services/{name}", {"insertDefaults": "true"}))
        except DaemonError as exc:
            if exc.status != 404:
                raise
            missing.append(name)
    if pretty_flag:
        for svc in found:
            click.echo(pretty(svc))
    else:
        print_inspect(found, fmt)
    if missing:
        raise CliError("\n".join(f"Error: no such service: {n}" for n in missing))


def parse_scale(arg: str) -> tuple[str, int]:
    m = _SCALE.match(arg)
    if not m:
        raise CliError(f"Error: invalid scale specifier '{arg}'.\nSee 'shoal service scale --help'.")
    try:
        return m.group(1), parse_uint(m.group(2))
    except ValueError as exc:
        raise CliError(f"Error: invalid replicas value {m.group(2)}: {exc}") from None


def scale_one(app: App, name: str, replicas: int) -> str:
    svc = app.client.get(f"/services/{name}", {"insertDefaults": "false"})
    spec = svc["Spec"]
    mode = spec.get("Mode") or {}
    if "Replicated" not in mode and "ReplicatedJob" not in mode:
        raise CliError(f"scale can only be used with replicated or replicated-job mode (service {name})")
    mode.setdefault("Replicated", {})["Replicas"] = replicas
    params: dict[str, str | int] = {"version": svc["Version"]["Index"]}
    app.client.post(f"/services/{svc['ID']}/update", params, spec)
    return str(svc["ID"])


@service.command("scale")
@with_flags(watch_flags())
@click.argument("pairs", nargs=-1, required=True)
@click.pass_obj
def scale(app: App, /, pairs: tuple[str, ...], **options: Any) -> None:
    """Scale one or more replicated services: SERVICE=REPLICAS..."""
    wanted = [parse_scale(p) for p in pairs]
    timeout_ns(options)
    errors: list[str] = []
    for name, replicas in wanted:
        try:
            service_id = scale_one(app, name, replicas)
        except CliError as exc:
            errors.append(exc.message)
            continue
        click.echo(f"{name} scaled to {replicas}")
        finish(app, service_id, options)
    if errors:
        raise CliError("\n".join(errors))


@service.command("rm")
@click.argument("names", nargs=-1, required=True)
@click.pass_obj
def rm(app: App, names: tuple[str, ...]) -> None:
    """Remove one or more services."""
    errors: list[str] = []
    for name in names:
        try:
            app.client.delete(f"/services/{name}")
        except DaemonError as exc:
            errors.append(exc.message)
            continue
        click.echo(name)
    if errors:
        raise CliError("\n".join(errors))


@service.command("rollback")
@with_flags(watch_flags())
@click.argument("name")
@click.pass_obj
def rollback(app: App, /, name: str, **options: Any) -> None:
    """Revert changes to a service's configuration."""
    timeout_ns(options)
    svc = app.client.get(f"/services/{name}", {"insertDefaults": "false"})
    params: dict[str, str | int] = {"rollback": "previous", "version": svc["Version"]["Index"]}
    app.client.post(f"/services/{svc['ID']}/update", params, svc["Spec"])
    click.echo(name)
    finish(app, svc["ID"], options)


for command in (create, ps, logs, update):
    service.add_command(command)

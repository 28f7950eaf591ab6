"""`shoal version`, `shoal info` and `shoal daemon`: the top-level system commands.

`shoal.cli.main` adds these to the root. `daemon` execs the `shoald` script installed next to
this Python (the CLI may not import shoal.daemon: the import-linter contract "the CLI speaks HTTP
only").
"""

from __future__ import annotations

import os
import platform
import sys
from importlib import metadata
from typing import Any

import click

from shoal.cli.client import MAX_API_VERSION, App, CliError
from shoal.cli.format import print_inspect


def client_version() -> str:
    try:
        return metadata.version("shoal")
    except metadata.PackageNotFoundError:
        return "0.0.0"


def _engine(version: dict[str, Any]) -> dict[str, Any]:
    for component in version.get("Components") or []:
        if component.get("Name") == "Engine":
            return {"Version": component.get("Version", ""), **(component.get("Details") or {})}
    return version


def version_text(app: App, server: dict[str, Any]) -> str:
    negotiated = app.client.api_version
    api = negotiated if negotiated == MAX_API_VERSION else f"{negotiated} (downgraded from {MAX_API_VERSION})"
    lines = ["Client:", f" Version:           {client_version()}", f" API version:       {api}",
             f" Python version:    {platform.python_version()}",
             f" OS/Arch:           {sys.platform}/{platform.machine()}", ""]
    engine = _engine(server)
    name = (server.get("Platform") or {}).get("Name", "")
    lines += [f"Server: {name}".rstrip(), " Engine:", f"  Version:          {engine.get('Version', '')}",
              f"  API version:      {engine.get('ApiVersion', '')} "
              f"(minimum version {engine.get('MinAPIVersion', '')})",
              f"  Git commit:       {engine.get('GitCommit', '')}",
              f"  OS/Arch:          {engine.get('Os', '')}/{engine.get('Arch', '')}",
              f"  Experimental:     {str(engine.get('Experimental', False)).lower()}"]
    return "\n".join(lines)


@click.command("version")
@click.option("-f", "--format", "fmt", help="Format output using a custom template")
@click.pass_obj
def version(app: App, fmt: str | None) -> None:
    """Show the Shoal version information."""
    server = app.client.get("/version")
    if fmt:
        data = {"Client": {"Version": client_version(), "ApiVersion": app.client.api_version},
                "Server": server}
        print_inspect([data], fmt)
        return
    click.echo(version_text(app, server))


def _swarm_lines(swarm: dict[str, Any]) -> list[str]:
    state = swarm.get("LocalNodeState") or "inactive"
    lines = [f" Swarm: {state}"]
    if state != "active":
        return lines
    lines += [f"  NodeID: {swarm.get('NodeID', '')}",
              f"  Is Manager: {str(bool(swarm.get('ControlAvailable'))).lower()}"]
    if swarm.get("ControlAvailable"):
        cluster = swarm.get("Cluster") or {}
        lines += [f"  ClusterID: {cluster.get('ID', '')}", f"  Managers: {swarm.get('Managers', 0)}",
                  f"  Nodes: {swarm.get('Nodes', 0)}"]
    lines.append(f"  Node Address: {swarm.get('NodeAddr', '')}")
    managers = swarm.get("RemoteManagers") or []
    if managers:
        lines.append("  Manager Addresses:")
        lines += [f"   {addr}" for addr in sorted(str(m.get("Addr", "")) for m in managers)]
    return lines


def info_text(info: dict[str, Any]) -> str:
    lines = ["Client:", f" Version:    {client_version()}", "", "Server:",
             f" Containers: {info.get('Containers', 0)}", f"  Running: {info.get('ContainersRunning', 0)}",
             f" Images: {info.get('Images', 0)}", f" Server Version: {info.get('ServerVersion', '')}"]
    lines += _swarm_lines(info.get("Swarm") or {})
    lines += [f" Kernel Version: {info.get('KernelVersion', '')}",
              f" Operating System: {info.get('OperatingSystem', '')}",
              f" OSType: {info.get('OSType', '')}", f" Architecture: {info.get('Architecture', '')}",
              f" CPUs: {info.get('NCPU', 0)}", f" Total Memory: {info.get('MemTotal', 0) / (1 << 30):.4g}GiB",
              f" Name: {info.get('Name', '')}", f" ID: {info.get('ID', '')}",
              f" Docker Root Dir: {info.get('DockerRootDir', '')}"]
    return "\n".join(lines)


@click.command("info")
@click.option("-f", "--format", "fmt", help="Format output using a custom template")
@click.pass_obj
def info(app: App, fmt: str | None) -> None:
    """Display system-wide information."""
    data = app.client.get("/info")
    if fmt:
        print_inspect([data], fmt)
        return
    click.echo(info_text(data))


@click.command("daemon", context_settings={"ignore_unknown_options": True, "allow_extra_args": True,
                                           "help_option_names": []})
@click.argument("args", nargs=-1, type=click.UNPROCESSED)
def daemon(args: tuple[str, ...]) -> None:
    """Run shoald (the daemon) with ARGS."""
    script = os.path.join(os.path.dirname(sys.executable), "shoald")
    if not os.access(script, os.X_OK):
        raise CliError(f"shoald not found next to {sys.executable}")
    os.execv(script, [script, *args])

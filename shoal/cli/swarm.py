"""`shoal swarm init|leave|join-token`: swarm membership, printed as docker prints it.

`shoal.cli.main` adds this group to the root.
"""

from __future__ import annotations

from typing import Any

import click

from shoal.cli.client import App, CliError
from shoal.cli.service_spec import convert, parse_duration, parse_uint


@click.group("swarm")
def swarm() -> None:
    """Manage Swarm."""


def init_request(advertise_addr: str | None, listen_addr: str, history: str | None,
                 heartbeat: str | None) -> dict[str, Any]:
    """docker's InitRequest; the spec carries only the flags given."""
    spec: dict[str, Any] = {}
    if history is not None:
        spec["Orchestration"] = {"TaskHistoryRetentionLimit": convert(history, "--task-history-limit",
                                                                      parse_uint)}
    if heartbeat is not None:
        spec["Dispatcher"] = {"HeartbeatPeriod": convert(heartbeat, "--dispatcher-heartbeat", parse_duration)}
    return {"ListenAddr": listen_addr, "AdvertiseAddr": advertise_addr or "", "DataPathAddr": "",
            "DataPathPort": 0, "ForceNewCluster": False, "Spec": spec, "AutoLockManagers": False,
            "Availability": "", "DefaultAddrPool": [], "SubnetSize": 24}


def join_hint(token: str, addr: str) -> str:
    return (f"To add a worker to this swarm, run the following command:\n\n"
            f"    shoal swarm join --token {token} {addr}\n")


@swarm.command("init")
@click.option("--advertise-addr", help="Advertised address (format: <ip|interface>[:port])")
@click.option("--listen-addr", default="0.0.0.0:2377", show_default=True, help="Listen address")
@click.option("--task-history-limit", help="Task history retention limit")
@click.option("--dispatcher-heartbeat", help="Dispatcher heartbeat period (ns|us|ms|s|m|h)")
@click.pass_obj
def init(app: App, advertise_addr: str | None, listen_addr: str, task_history_limit: str | None,
         dispatcher_heartbeat: str | None) -> None:
    """Initialize a swarm."""
    body = init_request(advertise_addr, listen_addr, task_history_limit, dispatcher_heartbeat)
    node_id = app.client.post("/swarm/init", body=body)
    node = app.client.get(f"/nodes/{node_id}")
    cluster = app.client.get("/swarm")
    addr = (node.get("ManagerStatus") or {}).get("Addr", "")
    click.echo(f"Swarm initialized: current node ({node_id}) is now a manager.\n")
    click.echo(join_hint(cluster["JoinTokens"]["Worker"], addr))
    click.echo("To add a manager to this swarm, run 'shoal swarm join-token manager' and follow the "
               "instructions.\n")


@swarm.command("leave")
@click.option("-f", "--force", is_flag=True, help="Force this node to leave the swarm, ignoring warnings")
@click.pass_obj
def leave(app: App, force: bool) -> None:
    """Leave the swarm."""
    app.client.post("/swarm/leave", {"force": 1} if force else None)
    click.echo("Node left the swarm.")


@swarm.command("join-token")
@click.option("-q", "--quiet", is_flag=True, help="Only display token")
@click.argument("role")
@click.pass_obj
def join_token(app: App, quiet: bool, role: str) -> None:
    """Manage join tokens: ROLE is worker or manager."""
    if role not in ("worker", "manager"):
        raise CliError("Error: unknown role " + role)
    cluster = app.client.get("/swarm")
    token = cluster["JoinTokens"]["Worker" if role == "worker" else "Manager"]
    if quiet:
        click.echo(token)
        return
    info = app.client.get("/info")
    node = app.client.get(f"/nodes/{info['Swarm']['NodeID']}")
    addr = (node.get("ManagerStatus") or {}).get("Addr", "")
    click.echo(f"To add a {role} to this swarm, run the following command:\n\n"
               f"    shoal swarm join --token {token} {addr}\n")

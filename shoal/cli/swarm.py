"""`shoal swarm init|join|leave|update|join-token`: swarm membership, printed as docker prints it.

`shoal.cli.main` adds this group to the root. The spec flags (`--cert-expiry`,
`--dispatcher-heartbeat`, `--task-history-limit`, and init's `--default-addr-pool*`) are checked
before any request and, as docker does, only the flags given change the spec (`spec_changes` is pure).
"""

from __future__ import annotations

import copy
import ipaddress
from typing import Any

import click

from shoal.cli.client import App, CliError
from shoal.cli.service_spec import convert, one_of, parse_duration, parse_uint

DEFAULT_PORT = 2377
AVAILABILITIES = ("active", "pause", "drain")


@click.group("swarm")
def swarm() -> None:
    """Manage Swarm."""


def spec_flags(func: Any) -> Any:
    """The swarm spec flags shared by init and update."""
    for option in (
        click.option("--task-history-limit", help="Task history retention limit"),
        click.option("--dispatcher-heartbeat", help="Dispatcher heartbeat period (ns|us|ms|s|m|h)"),
        click.option("--cert-expiry", help="Validity period for node certificates (ns|us|ms|s|m|h)"),
    ):
        func = option(func)
    return func


def spec_changes(history: str | None, heartbeat: str | None, expiry: str | None) -> dict[str, dict[str, int]]:
    """The spec sections the given flags set, e.g. {"Dispatcher": {"HeartbeatPeriod": ns}}."""
    changes: dict[str, dict[str, int]] = {}
    if history is not None:
        changes["Orchestration"] = {"TaskHistoryRetentionLimit": convert(history, "--task-history-limit",
                                                                         parse_uint)}
    if heartbeat is not None:
        changes["Dispatcher"] = {"HeartbeatPeriod": convert(heartbeat, "--dispatcher-heartbeat",
                                                            parse_duration)}
    if expiry is not None:
        changes["CAConfig"] = {"NodeCertExpiry": convert(expiry, "--cert-expiry", parse_duration)}
    return changes


def merge_spec(spec: dict[str, Any], changes: dict[str, dict[str, int]]) -> dict[str, Any]:
    out = copy.deepcopy(spec)
    for section, fields in changes.items():
        out[section] = {**(out.get(section) or {}), **fields}
    return out


def node_addr(text: str, flag: str) -> str:
    """docker's NodeAddrOption: `host[:port]`, the port defaulting to 2377, the host to 0.0.0.0."""
    host, sep, port = text.rpartition(":")
    if not sep or "]" in port:
        host, port = text, ""
    if port and not port.isdigit():
        raise CliError(f'invalid argument "{text}" for "{flag}" flag: invalid port: {port}')
    return f"{host or '0.0.0.0'}:{port or DEFAULT_PORT}"


def parse_pool(text: str) -> str:
    """pflag's IPNet slice: comma-separated CIDRs, each sent as its network (`10.20.0.0/16`)."""
    pools = []
    for item in text.split(","):
        address, sep, prefix = item.strip().partition("/")
        try:
            if not sep or not prefix.isdigit():
                raise ValueError(item)
            pools.append(str(ipaddress.ip_network(f"{address}/{prefix}", strict=False)))
        except ValueError:
            raise ValueError(f"invalid CIDR address: {item.strip()}") from None
    return ",".join(pools)


def address_pools(pools: tuple[str, ...], mask_length: str | None) -> tuple[list[str], int]:
    """--default-addr-pool (repeatable) and --default-addr-pool-mask-length (default 24)."""
    cidrs = [c for p in pools for c in convert(p, "--default-addr-pool", parse_pool).split(",")]
    size = 24 if mask_length is None else convert(mask_length, "--default-addr-pool-mask-length", parse_uint)
    return cidrs, size


def init_request(advertise_addr: str | None, listen_addr: str, changes: dict[str, dict[str, int]],
                 pools: list[str] | None = None, subnet_size: int = 24) -> dict[str, Any]:
    """docker's InitRequest; the spec carries only the flags given."""
    return {"ListenAddr": node_addr(listen_addr, "--listen-addr"), "AdvertiseAddr": advertise_addr or "",
            "DataPathAddr": "", "DataPathPort": 0, "ForceNewCluster": False, "Spec": merge_spec({}, changes),
            "AutoLockManagers": False, "Availability": "", "DefaultAddrPool": pools or [],
            "SubnetSize": subnet_size}


def join_hint(token: str, addr: str, role: str = "worker") -> str:
    return (f"To add a {role} to this swarm, run the following command:\n\n"
            f"    shoal swarm join --token {token} {addr}\n")


@swarm.command("init")
@click.option("--advertise-addr", help="Advertised address (format: <ip|interface>[:port])")
@click.option("--listen-addr", default="0.0.0.0:2377", show_default=True, help="Listen address")
@click.option("--default-addr-pool", multiple=True, help="Default address pool in CIDR format")
@click.option("--default-addr-pool-mask-length", help="Default address pool subnet mask length (default 24)")
@spec_flags
@click.pass_obj
def init(app: App, advertise_addr: str | None, listen_addr: str, default_addr_pool: tuple[str, ...],
         default_addr_pool_mask_length: str | None, task_history_limit: str | None,
         dispatcher_heartbeat: str | None, cert_expiry: str | None) -> None:
    """Initialize a swarm."""
    changes = spec_changes(task_history_limit, dispatcher_heartbeat, cert_expiry)
    pools, subnet_size = address_pools(default_addr_pool, default_addr_pool_mask_length)
    body = init_request(advertise_addr, listen_addr, changes, pools, subnet_size)
    node_id = app.client.post("/swarm/init", body=body)
    node = app.client.get(f"/nodes/{node_id}")
    cluster = app.client.get("/swarm")
    addr = (node.get("ManagerStatus") or {}).get("Addr", "")
    click.echo(f"Swarm initialized: current node ({node_id}) is now a manager.\n")
    click.echo(join_hint(cluster["JoinTokens"]["Worker"], addr))
    click.echo("To add a manager to this swarm, run 'shoal swarm join-token manager' and follow the "
               "instructions.\n")


@swarm.command("join")
@click.option("--token", help="Token for entry into the swarm")
@click.option("--advertise-addr", help="Advertised address (format: <ip|interface>[:port])")
@click.option("--listen-addr", default="0.0.0.0:2377", show_default=True, help="Listen address")
@click.option("--availability", help="Availability of the node (\"active\", \"pause\", \"drain\")")
@click.argument("remote")
@click.pass_obj
def join(app: App, token: str | None, advertise_addr: str | None, listen_addr: str,
         availability: str | None, remote: str) -> None:
    """Join a swarm as a node and/or manager: REMOTE is a manager's HOST:PORT."""
    if not token:
        raise CliError('required flag(s) "token" not set')
    if availability is not None:
        convert(availability, "--availability", one_of(AVAILABILITIES))
    body = {"ListenAddr": node_addr(listen_addr, "--listen-addr"), "AdvertiseAddr": advertise_addr or "",
            "DataPathAddr": "", "RemoteAddrs": [remote], "JoinToken": token,
            "Availability": availability or ""}
    app.client.post("/swarm/join", body=body)
    info = app.client.get("/info") or {}
    role = "manager" if (info.get("Swarm") or {}).get("ControlAvailable") else "worker"
    click.echo(f"This node joined a swarm as a {role}.")


@swarm.command("leave")
@click.option("-f", "--force", is_flag=True, help="Force this node to leave the swarm, ignoring warnings")
@click.pass_obj
def leave(app: App, force: bool) -> None:
    """Leave the swarm."""
    app.client.post("/swarm/leave", {"force": 1} if force else None)
    click.echo("Node left the swarm.")


def update_params(version: int, worker: bool = False, manager: bool = False) -> dict[str, str | int]:
    """The Go client's SwarmUpdate query: every rotate flag, then the version."""
    return {"rotateManagerToken": str(manager).lower(), "rotateManagerUnlockKey": "false",
            "rotateWorkerToken": str(worker).lower(), "version": version}


@swarm.command("update")
@spec_flags
@click.pass_obj
def update(app: App, task_history_limit: str | None, dispatcher_heartbeat: str | None,
           cert_expiry: str | None) -> None:
    """Update the swarm."""
    changes = spec_changes(task_history_limit, dispatcher_heartbeat, cert_expiry)
    cluster = app.client.get("/swarm")
    spec = merge_spec(cluster.get("Spec") or {}, changes)
    app.client.post("/swarm/update", update_params(cluster["Version"]["Index"]), spec)
    click.echo("Swarm updated.")


@swarm.command("join-token")
@click.option("-q", "--quiet", is_flag=True, help="Only display token")
@click.option("--rotate", is_flag=True, help="Rotate join token")
@click.argument("role")
@click.pass_obj
def join_token(app: App, quiet: bool, rotate: bool, role: str) -> None:
    """Manage join tokens: ROLE is worker or manager."""
    if role not in ("worker", "manager"):
        raise CliError("Error: unknown role " + role)
    worker = role == "worker"
    cluster = app.client.get("/swarm")
    if rotate:
        app.client.post("/swarm/update", update_params(cluster["Version"]["Index"], worker, not worker),
                        cluster.get("Spec") or {})
        if not quiet:
            click.echo(f"Successfully rotated {role} join token.\n")
        cluster = app.client.get("/swarm")
    token = cluster["JoinTokens"]["Worker" if worker else "Manager"]
    if quiet:
        click.echo(token)
        return
    info = app.client.get("/info")
    node = app.client.get(f"/nodes/{info['Swarm']['NodeID']}")
    addr = (node.get("ManagerStatus") or {}).get("Addr", "")
    click.echo(join_hint(token, addr, role))

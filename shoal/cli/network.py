"""`shoal network create|ls|inspect|rm`: overlay networks, as the docker CLI sends and prints them.

`shoal.cli.main` adds the group to the root. `network_resolver` is also used by `service create`
and `service update` to turn `--network NAME` into the network's ID (docker resolves it on the
client with `GET /networks/NAME?scope=swarm`). `create_body` and `ipam_config` are pure.
"""

from __future__ import annotations

import datetime as dt
import ipaddress
from collections.abc import Mapping, Sequence
from typing import Any

import click

from shoal.cli.client import App, CliError, DaemonError, Params, encode_filters, parse_filter_flags
from shoal.cli.endpoint import Resolver
from shoal.cli.format import parse_time, print_inspect, print_rows, truncate_id
from shoal.cli.node import natural_key
from shoal.cli.service_spec import kv_map

LS_HEADERS = {"ID": "NETWORK ID", "Name": "NAME", "Driver": "DRIVER", "Scope": "SCOPE", "IPv4": "IPV4",
              "IPv6": "IPV6", "Internal": "INTERNAL", "Labels": "LABELS", "CreatedAt": "CREATED AT"}
LS_TABLE = "{{.ID}}\t{{.Name}}\t{{.Driver}}\t{{.Scope}}"
INGRESS_WARNING = ("WARNING! Before removing the routing-mesh network, make sure all the nodes in your swarm "
                   "run the same shoal version. Otherwise, removal may not be effective and functionality of "
                   "newly create ingress networks will be impaired.\nAre you sure you want to continue?")


@click.group("network")
def network() -> None:
    """Manage networks."""


def network_resolver(app: App) -> Resolver:
    """ref (name, ID or ID prefix) → (ID, name), one `GET /networks/<ref>?scope=swarm` per ref."""
    cache: dict[str, tuple[str, str]] = {}

    def resolve(ref: str) -> tuple[str, str]:
        if ref not in cache:
            found = app.client.get(f"/networks/{ref}", {"scope": "swarm"}) or {}
            cache[ref] = (str(found.get("Id") or found.get("ID") or ref), str(found.get("Name") or ref))
        return cache[ref]
    return resolve


# ------------------------------------------------------------------------------------------- create
def _cidr(text: str) -> ipaddress.IPv4Network | ipaddress.IPv6Network:
    """Go's net.ParseCIDR (host bits allowed, a prefix length required)."""
    address, sep, prefix = text.partition("/")
    try:
        if not sep or not prefix.isdigit():
            raise ValueError(text)
        return ipaddress.ip_network(f"{address}/{prefix}", strict=False)
    except ValueError:
        raise CliError(f"invalid subnet: invalid CIDR address: {text}") from None


def _contains(subnet: str, data: str) -> bool:
    """docker's subnetMatches: is the address (or a CIDR's address) of `data` inside `subnet`?"""
    net = _cidr(subnet)
    try:
        return ipaddress.ip_address(data.partition("/")[0]) in net
    except ValueError:
        if "/" in data:
            raise CliError(f"invalid CIDR address: {data}") from None
        return False


def _assign(configs: dict[str, dict[str, str]], field: str, what: str, values: Sequence[str]) -> None:
    """Each --ip-range/--gateway goes to the one subnet that contains it."""
    for value in values:
        matched = False
        for subnet, config in configs.items():
            if not _contains(subnet, value):
                continue
            if config.get(field):
                many = "ranges" if field == "IPRange" else "gateways"
                prep = "on" if field == "IPRange" else "for"
                raise CliError(f"cannot configure multiple {many} ({value}, {config[field]}) {prep} the same "
                               f"subnet ({subnet})")
            config[field] = value
            matched = True
        if not matched:
            raise CliError(f"no matching subnet for {what} {value}")


def ipam_config(subnets: Sequence[str], ranges: Sequence[str],
                gateways: Sequence[str]) -> list[dict[str, str]]:
    """docker's consolidateIpam: IPAM.Config [{Subnet, IPRange, Gateway}] (empty without --subnet)."""
    if len(subnets) < len(ranges) or len(subnets) < len(gateways):
        raise CliError("every ip-range or gateway must have a corresponding subnet")
    configs: dict[str, dict[str, str]] = {}
    for subnet in subnets:
        net = _cidr(subnet)
        if any(net.overlaps(_cidr(other)) for other in configs if _cidr(other).version == net.version):
            raise CliError("multiple overlapping subnet configuration is not supported")
        configs[subnet] = {"Subnet": subnet}
    _assign(configs, "IPRange", "range", ranges)
    _assign(configs, "Gateway", "gateway", gateways)
    return list(configs.values())


def create_body(name: str, o: Mapping[str, Any]) -> dict[str, Any]:
    """The POST /networks/create body the docker CLI sends (API ≥ 1.44: no CheckDuplicate)."""
    config = ipam_config(o.get("subnet") or (), o.get("ip_range") or (), o.get("gateway") or ())
    return {
        "Name": name, "Driver": o["driver"], "Scope": o.get("scope") or "",
        "IPAM": {"Driver": "default", "Options": {}, "Config": config},
        "Internal": bool(o.get("internal")), "Attachable": bool(o.get("attachable")),
        "Ingress": bool(o.get("ingress")), "ConfigOnly": False, "ConfigFrom": None,
        "Options": kv_map(o.get("opt") or ()), "Labels": kv_map(o.get("label") or ()),
    }


@network.command("create")
@click.option("-d", "--driver", default="overlay", show_default=True, help="Driver to manage the Network")
@click.option("--attachable", is_flag=True, help="Enable manual container attachment")
@click.option("--internal", is_flag=True, help="Restrict external access to the network")
@click.option("--ingress", is_flag=True, help="Create swarm routing-mesh network")
@click.option("--scope", help="Control the network's scope")
@click.option("--subnet", multiple=True, help="Subnet in CIDR format that represents a network segment")
@click.option("--ip-range", multiple=True, help="Allocate container ip from a sub-range")
@click.option("--gateway", multiple=True, help="IPv4 or IPv6 Gateway for the master subnet")
@click.option("--label", multiple=True, help="Set metadata on a network")
@click.option("-o", "--opt", multiple=True, help="Set driver specific options")
@click.argument("name")
@click.pass_obj
def create(app: App, /, name: str, **options: Any) -> None:
    """Create a network."""
    body = create_body(name, options)
    response = app.client.post("/networks/create", body=body) or {}
    if response.get("Warning"):
        click.echo(response["Warning"], err=True)
    click.echo(response.get("Id") or response.get("ID", ""))


# ----------------------------------------------------------------------------------------------- ls
def go_time(text: str | None) -> str:
    """Go's time.Time.String() for an RFC 3339 time: `2025-01-02 03:04:05.123456 +0000 UTC`."""
    when = parse_time(text)
    if when is None:
        return "0001-01-01 00:00:00 +0000 UTC"
    when = when.astimezone(dt.UTC)
    frac = f".{when.microsecond:06d}".rstrip("0").rstrip(".")
    return f"{when:%Y-%m-%d %H:%M:%S}{frac} +0000 UTC"


def go_bool(value: Any) -> str:
    return "true" if value else "false"


def ls_rows(networks: Sequence[Mapping[str, Any]], trunc: bool = True) -> list[dict[str, str]]:
    """Rows sorted naturally by name, with docker's network formatter fields."""
    rows = []
    for n in sorted(networks, key=lambda n: natural_key(str(n.get("Name", "")))):
        labels = n.get("Labels") or {}
        network_id = str(n.get("Id") or n.get("ID") or "")
        rows.append({
            "ID": truncate_id(network_id) if trunc else network_id, "Name": str(n.get("Name", "")),
            "Driver": str(n.get("Driver", "")), "Scope": str(n.get("Scope", "")),
            "IPv4": go_bool(n.get("EnableIPv4", True)), "IPv6": go_bool(n.get("EnableIPv6")),
            "Internal": go_bool(n.get("Internal")), "CreatedAt": go_time(n.get("Created")),
            "Labels": ",".join(f"{k}={labels[k]}" for k in sorted(labels)),
        })
    return rows


@network.command("ls")
@click.option("-f", "--filter", "filters", multiple=True, help="Filter output (e.g. 'name=x')")
@click.option("--format", "fmt", help="Format output using a custom template ('table', 'json', ...)")
@click.option("-q", "--quiet", is_flag=True, help="Only display network IDs")
@click.option("--no-trunc", is_flag=True, help="Do not truncate the output")
@click.pass_obj
def ls(app: App, filters: tuple[str, ...], fmt: str | None, quiet: bool, no_trunc: bool) -> None:
    """List networks."""
    grouped = parse_filter_flags(filters)
    params: Params | None = {"filters": encode_filters(grouped)} if grouped else None
    rows = ls_rows(app.client.get("/networks", params) or [], trunc=not no_trunc)
    print_rows(rows, LS_HEADERS, LS_TABLE, fmt, quiet_field="ID" if quiet else None)


# ---------------------------------------------------------------------------------- inspect and rm
@network.command("inspect")
@click.option("-f", "--format", "fmt", help="Format output using a custom template")
@click.option("-v", "--verbose", is_flag=True, help="Verbose output for diagnostics")
@click.argument("names", nargs=-1, required=True)
@click.pass_obj
def inspect(app: App, fmt: str | None, verbose: bool, names: tuple[str, ...]) -> None:
    """Display detailed information on one or more networks."""
    found, errors = [], []
    for name in names:
        try:
            found.append(app.client.get(f"/networks/{name}", {"verbose": "true"} if verbose else None))
        except DaemonError as exc:
            errors.append(exc.message)
    print_inspect(found, fmt)
    if errors:
        raise CliError("\n".join(errors))


def _confirm_ingress(app: App, name: str) -> bool:
    """docker asks before removing the routing-mesh network; other lookups' errors are ignored."""
    try:
        found = app.client.get(f"/networks/{name}") or {}
    except DaemonError:
        return True
    return not found.get("Ingress") or click.confirm(INGRESS_WARNING, default=False, err=True)


@network.command("rm")
@click.option("-f", "--force", is_flag=True, help="Do not error if the network does not exist")
@click.argument("names", nargs=-1, required=True)
@click.pass_obj
def rm(app: App, force: bool, names: tuple[str, ...]) -> None:
    """Remove one or more networks."""
    failed = False
    for name in names:
        if not _confirm_ingress(app, name):
            continue
        try:
            app.client.delete(f"/networks/{name}")
        except DaemonError as exc:
            if not (force and exc.status == 404):
                click.echo(exc.message, err=True)
                failed = True
            continue
        click.echo(name)
    if failed:
        raise CliError("", exit_code=1)

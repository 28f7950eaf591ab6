"""`shoal node inspect [--pretty] [-f F] self|NODE...` and the `self` reference.

Registered on the `node` group by `shoal.cli.node`. `pretty` is pure: the node JSON as the daemon
sent it in, docker's `--pretty` layout out (tabs kept raw, as docker prints them).
"""

from __future__ import annotations

import datetime as dt
from typing import Any

import click

from shoal.cli.client import App, CliError, DaemonError
from shoal.cli.format import indent_json, parse_time, pretty_state, print_inspect

_BINARY_UNITS = ("B", "KiB", "MiB", "GiB", "TiB", "PiB", "EiB", "ZiB", "YiB")


def resolve_node(app: App, ref: str) -> str:
    """docker's node.Reference: `self` is this node's ID (from GET /info), anything else as given."""
    if ref != "self":
        return ref
    node_id = ((app.client.get("/info") or {}).get("Swarm") or {}).get("NodeID", "")
    if not node_id:
        raise CliError("Error: This node is not a swarm manager. Use \"shoal swarm init\" or "
                       "\"shoal swarm join\" to connect this node to swarm and try again.")
    return str(node_id)


def bytes_size(size: float) -> str:
    """go-units BytesSize: binary units, 4 significant digits (`7.667GiB`)."""
    i = 0
    while size >= 1024.0 and i < len(_BINARY_UNITS) - 1:
        size /= 1024.0
        i += 1
    return f"{size:.4g}{_BINARY_UNITS[i]}"


def go_time(text: str | None) -> str:
    """A timestamp as Go's time.Time prints it: `2025-01-02 03:04:05.123456789 +0000 UTC`."""
    when = parse_time(text)
    if when is None:
        return text or ""
    when = when.astimezone(dt.UTC)
    frac = ""
    if text and "." in text:
        frac = "".join(ch for ch in text.partition(".")[2] if ch.isdigit()).rstrip("0")
    return f"{when:%Y-%m-%d %H:%M:%S}{'.' + frac if frac else ''} +0000 UTC"


def _labels(title: str, labels: dict[str, str]) -> list[str]:
    if not labels:
        return []
    return [f"{title}:", *(f" - {k}={v}" if v else f" - {k}" for k, v in sorted(labels.items()))]


def _status_lines(n: dict[str, Any]) -> list[str]:
    status = n.get("Status") or {}
    lines = ["Status:", f" State:\t\t\t{pretty_state(str(status.get('State', '')))}"]
    if status.get("Message"):
        lines.append(f" Message:              \t{status['Message']}")
    availability = str((n.get("Spec") or {}).get("Availability", ""))
    lines.append(f" Availability:         \t{pretty_state(availability)}")
    if status.get("Addr"):
        lines.append(f" Address:\t\t{status['Addr']}")
    manager = n.get("ManagerStatus")
    if manager:
        lines += ["Manager Status:", f" Address:\t\t{manager.get('Addr', '')}",
                  f" Raft Status:\t\t{pretty_state(str(manager.get('Reachability', '')))}",
                  f" Leader:\t\t{'Yes' if manager.get('Leader') else 'No'}"]
    return lines


def _tls_lines(tls: dict[str, Any]) -> list[str]:
    if not any(tls.values()):
        return []
    return ["TLS Info:", " TrustRoot:", str(tls.get("TrustRoot", "")).rstrip("\n"),
            f" Issuer Subject:\t{tls.get('CertIssuerSubject', '')}",
            f" Issuer Public Key:\t{tls.get('CertIssuerPublicKey', '')}"]


def pretty(n: dict[str, Any]) -> str:
    """docker's nodeInspectPrettyTemplate."""
    spec = n.get("Spec") or {}
    desc = n.get("Description") or {}
    platform = desc.get("Platform") or {}
    resources = desc.get("Resources") or {}
    engine = desc.get("Engine") or {}
    lines = [f"ID:\t\t\t{n.get('ID', '')}"]
    if spec.get("Name"):
        lines.append(f"Name:\t\t\t{spec['Name']}")
    lines += _labels("Labels", spec.get("Labels") or {})
    lines += [f"Hostname:              \t{desc.get('Hostname', '')}",
              f"Joined at:             \t{go_time(n.get('CreatedAt'))}"]
    lines += _status_lines(n)
    lines += ["Platform:", f" Operating System:\t{platform.get('OS', '')}",
              f" Architecture:\t\t{platform.get('Architecture', '')}",
              "Resources:", f" CPUs:\t\t\t{int(resources.get('NanoCPUs', 0)) / 1e9:g}",
              f" Memory:\t\t{bytes_size(float(resources.get('MemoryBytes', 0)))}",
              f"Engine Version:\t\t{engine.get('EngineVersion', '')}"]
    lines += _labels("Engine Labels", engine.get("Labels") or {})
    lines += _tls_lines(desc.get("TLSInfo") or {})
    return "\n".join(lines)


@click.command("inspect")
@click.option("-f", "--format", "fmt", help="Format output using a custom template")
@click.option("--pretty", "as_pretty", is_flag=True, help="Print the information in a human friendly format")
@click.argument("refs", nargs=-1, required=True)
@click.pass_obj
def inspect(app: App, fmt: str | None, as_pretty: bool, refs: tuple[str, ...]) -> None:
    """Display detailed information on one or more nodes."""
    found: list[dict[str, Any]] = []
    errors: list[str] = []
    for ref in refs:
        try:
            found.append(app.client.get(f"/nodes/{resolve_node(app, ref)}"))
        except DaemonError as exc:
            errors.append(exc.message)
    if as_pretty:
        for n in found:
            click.echo(pretty(n))
    elif fmt:
        print_inspect(found, fmt)
    else:
        click.echo(indent_json(found))
    if errors:
        raise CliError("\n".join(errors))

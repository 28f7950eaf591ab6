"""`--publish`, `--network` and `--endpoint-mode` values → EndpointSpec and TaskTemplate.Networks.

As the docker CLI does (opts/port.go, opts/network.go, cli/command/service/update.go and the
service formatter). Used by `service_spec` (create), `service_update` (`--publish-add/-rm`,
`--network-add/-rm`, `--endpoint-mode`) and `service` (`ls` PORTS). Everything here is pure:
network names are resolved to IDs by the caller through a `Resolver` (ref → (ID, name)).
Parse errors raise ValueError with docker's reason; the callers wrap them into
`invalid argument "x" for "-p, --publish" flag: reason`.
"""

from __future__ import annotations

import csv
import ipaddress
import re
from collections.abc import Callable, Iterable, Mapping
from typing import Any

from shoal.cli.client import CliError

Spec = dict[str, Any]
# ref as typed → (network ID, network name)
Resolver = Callable[[str], tuple[str, str]]

PROTOCOLS = ("tcp", "udp", "sctp")
PUBLISH_MODES = ("ingress", "host")
ENDPOINT_MODES = ("vip", "dnsrr")
_LONG_SYNTAX = re.compile(r"\w+=\w+")


def _csv_fields(text: str) -> list[str]:
    return next(csv.reader([text]), [])


def parse_uint16(text: str) -> int:
    """Go's strconv.ParseUint(text, 10, 16) with its error texts."""
    if not re.fullmatch(r"\d+", text):
        raise ValueError(f'strconv.ParseUint: parsing "{text}": invalid syntax')
    value = int(text)
    if value > 0xFFFF:
        raise ValueError(f'strconv.ParseUint: parsing "{text}": value out of range')
    return value


def port_range(text: str) -> tuple[int, int]:
    """go-connections nat.ParsePortRange: `80` or `8000-8010`."""
    if not text:
        raise ValueError("empty string specified for ports")
    if "-" not in text:
        port = parse_uint16(text)
        return port, port
    parts = text.split("-")
    start, end = parse_uint16(parts[0]), parse_uint16(parts[1])
    if end < start:
        raise ValueError(f"invalid range specified for port: {text}")
    return start, end


def _split_parts(raw: str) -> tuple[str, str, str]:
    """nat's splitParts: [ip:][host:]container."""
    parts = raw.split(":")
    if len(parts) == 1:
        return "", "", parts[0]
    if len(parts) == 2:
        return "", parts[0], parts[1]
    return ":".join(parts[:-2]), parts[-2], parts[-1]


def _split_proto(raw: str) -> tuple[str, str]:
    """nat.SplitProtoPort: `80/udp` → (udp, 80); no protocol means tcp."""
    parts = raw.split("/")
    if not raw or not parts[0]:
        return "", ""
    if len(parts) == 1 or not parts[1]:
        return "tcp", parts[0]
    return parts[1], parts[0]


def _check_ip(ip: str) -> None:
    bare = ip[1:-1] if ip.startswith("[") and ip.endswith("]") else ip
    try:
        ipaddress.ip_address(bare)
    except ValueError:
        raise ValueError(f"invalid IP address: {ip}") from None
    raise ValueError("hostip is not supported")


def parse_short_port(raw: str) -> list[Spec]:
    """`[PUBLISHED:]TARGET[/PROTO]`, ranges allowed (`8080-8081:80-81`), as PortConfigs."""
    ip, host, container = _split_parts(raw)
    proto, container = _split_proto(container)
    proto = proto.lower()
    if proto not in PROTOCOLS:
        raise ValueError(f"invalid proto: {proto}")
    if ip:
        _check_ip(ip)
    if not container:
        raise ValueError(f"no port specified: {raw}<empty>")
    try:
        start, end = port_range(container)
    except ValueError:
        raise ValueError(f"invalid containerPort: {container}") from None
    host_start = host_end = 0
    if host:
        try:
            host_start, host_end = port_range(host)
        except ValueError:
            raise ValueError(f"invalid hostPort: {host}") from None
        if end - start != host_end - host_start and end != start:
            raise ValueError(f"invalid ranges specified for container and host Ports: {container} and {host}")
    ports: list[Spec] = []
    for i, target in enumerate(range(start, end + 1)):
        published: Iterable[int] = [0]
        if host:
            published = range(host_start, host_end + 1) if start == end else [host_start + i]
        for pub in published:
            port: Spec = {"Protocol": proto, "TargetPort": target, "PublishMode": "ingress"}
            if pub:
                port["PublishedPort"] = pub
            ports.append(port)
    return ports


def _long_port_field(port: Spec, key: str, value: str) -> None:
    if key == "protocol":
        if value not in PROTOCOLS:
            raise ValueError(f"invalid protocol value '{value}'")
        port["Protocol"] = value
    elif key == "mode":
        if value not in PUBLISH_MODES:
            raise ValueError(f"invalid publish mode value ({value}): must be either 'ingress' or 'host'")
        port["PublishMode"] = value
    elif key == "target":
        port["TargetPort"] = parse_uint16(value)
    elif key == "published":
        port["PublishedPort"] = parse_uint16(value)
    else:
        raise ValueError(f"invalid field key: {key}")


def parse_long_port(raw: str) -> Spec:
    """`published=8080,target=80,protocol=udp,mode=host` (keys and values case-insensitive)."""
    fields: Spec = {}
    for field in _csv_fields(raw):
        key, sep, value = field.lower().partition("=")
        if not sep or not key:
            raise ValueError(f"invalid field: {field}")
        _long_port_field(fields, key, value)
    if not fields.get("TargetPort"):
        raise ValueError("missing mandatory field 'target'")
    port: Spec = {"Protocol": fields.get("Protocol", "tcp"), "TargetPort": fields["TargetPort"],
                  "PublishMode": fields.get("PublishMode", "ingress")}
    if fields.get("PublishedPort"):
        port["PublishedPort"] = fields["PublishedPort"]
    return port


def parse_ports(raw: str) -> list[Spec]:
    """One `-p` value: the long form if it has `key=value`, else the short form."""
    return [parse_long_port(raw)] if _LONG_SYNTAX.search(raw) else parse_short_port(raw)


def parse_network(raw: str) -> Spec:
    """`NAME` or `name=NAME,alias=A,alias=B,driver-opt=k=v` → NetworkAttachmentConfig (Target as typed)."""
    if not _LONG_SYNTAX.search(raw):
        return {"Target": raw}
    target, aliases, driver_opts = "", [], {}
    for field in _csv_fields(raw):
        key, sep, value = field.partition("=")
        key = key.strip().lower()
        if not sep or not key:
            raise ValueError(f"invalid field {field}")
        if key == "name":
            target = value
        elif key == "alias":
            aliases.append(value)
        elif key == "driver-opt":
            opt_key, opt_sep, opt_value = value.partition("=")
            if opt_sep and opt_key.strip():
                driver_opts[opt_key.strip().lower()] = opt_value.strip().lower()
        else:
            raise ValueError(f"invalid field key {key}")
    if not target:
        raise ValueError("network name/id is not specified")
    attachment: Spec = {"Target": target}
    if aliases:
        attachment["Aliases"] = aliases
    if driver_opts:
        attachment["DriverOpts"] = driver_opts
    return attachment


def endpoint_mode(raw: str) -> str:
    mode = raw.lower()
    if mode not in ENDPOINT_MODES:
        raise ValueError("must be one of vip, dnsrr")
    return mode


# ---------------------------------------------------------------------------------- spec changes
def resolve_networks(attachments: Iterable[Spec], resolve: Resolver) -> list[Spec]:
    """create: every Target becomes the network's ID; sorted by Target as docker does."""
    out = [{**a, "Target": resolve(a["Target"])[0]} for a in attachments]
    return sorted(out, key=lambda a: str(a["Target"]))


def update_networks(spec: Spec, add: Iterable[Spec], remove: Iterable[str], resolve: Resolver) -> None:
    """docker's updateNetworks: drop --network-rm (by ID or name), append --network-add, sort.

    The deprecated top-level `Networks` moves into TaskTemplate, as docker does."""
    task = spec.setdefault("TaskTemplate", {})
    current = task.get("Networks") or spec.get("Networks") or []
    spec.pop("Networks", None)
    removed: set[str] = set()
    for ref in remove:
        removed.update(resolve(ref))
    kept = [n for n in current if n.get("Target") not in removed]
    existing = {str(n.get("Target")) for n in kept}
    for attachment in add:
        network_id = resolve(attachment["Target"])[0]
        if network_id in existing:
            raise CliError(f"service is already attached to network {attachment['Target']}")
        kept.append({**attachment, "Target": network_id})
        existing.add(network_id)
    kept.sort(key=lambda n: str(n.get("Target")))
    if kept:
        task["Networks"] = kept
    else:
        task.pop("Networks", None)


def _port_key(port: Mapping[str, Any]) -> str:
    """docker's portConfigToString: `8080:80/tcp/ingress`."""
    return (f"{port.get('PublishedPort', 0)}:{port.get('TargetPort', 0)}/{port.get('Protocol', '')}"
            f"/{port.get('PublishMode', '')}")


def _same_port(port: Mapping[str, Any], rm: Mapping[str, Any]) -> bool:
    """docker's --publish-rm match: target port, protocol (""=tcp), publish mode (""=ingress)."""
    return (port.get("TargetPort") == rm.get("TargetPort")
            and (port.get("Protocol") or "tcp") == (rm.get("Protocol") or "tcp")
            and (port.get("PublishMode") or "ingress") == (rm.get("PublishMode") or "ingress"))


def update_ports(endpoint: Spec, add: Iterable[Spec], remove: Iterable[Spec]) -> None:
    """docker's updatePorts: dedupe, drop --publish-rm matches, add the new ones, sort by
    `published:target/proto/mode`."""
    current: dict[str, Spec] = {}
    for port in endpoint.get("Ports") or []:
        current.setdefault(_port_key(port), port)
    removals = list(remove)
    ports = [p for p in current.values() if not any(_same_port(p, rm) for rm in removals)]
    for port in add:
        if _port_key(port) not in current:
            ports.append(port)
    ports.sort(key=_port_key)
    if ports:
        endpoint["Ports"] = ports
    else:
        endpoint.pop("Ports", None)


# ----------------------------------------------------------------------------------- ls PORTS column
def _range_text(pub: tuple[int, int], target: tuple[int, int], protocol: str) -> str:
    pub_text = f"{pub[0]}-{pub[1]}" if pub[1] > pub[0] else str(pub[0])
    target_text = f"{target[0]}-{target[1]}" if target[1] > target[0] else str(target[0])
    return f"*:{pub_text}->{target_text}/{protocol}"


def ports_text(ports: Iterable[Mapping[str, Any]]) -> str:
    """docker's service ls PORTS: ingress ports only, consecutive ones merged (`*:8080-8081->80-81/tcp`)."""
    ordered = sorted(ports, key=lambda p: (str(p.get("Protocol", "")), int(p.get("PublishedPort", 0))))
    out: list[str] = []
    pub, target, protocol = (0, 0), (0, 0), ""
    for p in ordered:
        if p.get("PublishMode") != "ingress":
            continue
        published, tport, proto = int(p.get("PublishedPort", 0)), int(p.get("TargetPort", 0)), str(
            p.get("Protocol", ""))
        is_range = target[1] != target[0]
        if (proto != protocol or published - pub[1] not in (0, 1) or tport - target[1] not in (0, 1)
                or (is_range and tport <= target[1])):
            if pub[0] > 0:
                out.append(_range_text(pub, target, protocol))
            pub, target, protocol = (published, published), (tport, tport), proto
            continue
        pub, target = (pub[0], published), (target[0], tport)
    if pub[0] > 0:
        out.append(_range_text(pub, target, protocol))
    return ", ".join(out)

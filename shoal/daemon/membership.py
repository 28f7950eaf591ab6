"""This host's swarm membership on disk (`D/node.json`) and the addresses it binds and advertises.

Used by daemon/cluster.py. A manager's store holds the Cluster and every Node, but a worker's
store holds nothing, so node.json is the one record of a worker's membership: its node ID, role,
advertised address and the managers it talks to. A manager records its cluster port's bind
address there too, so a restarted daemon binds the same one. Files of issue 2 hold only
{"node_id"}; `load` reads them as a manager's when the store holds a Cluster.

Address rules (never a wildcard in the root namespace): the cluster port binds the advertise
address; that is the request's AdvertiseAddr, else `--advertise-addr`, else the host of the listen
address unless it is a wildcard, else 127.0.0.1. Its port is the request's ListenAddr port unless
the request carries the CLI's default (0.0.0.0:2377) or none, then `--listen-addr`'s, else 2377.
"""

from __future__ import annotations

import contextlib
import os
from pathlib import Path

import msgspec

CLUSTER_PORT = 2377
CLI_DEFAULT_LISTEN = "0.0.0.0:2377"
_WILDCARDS = ("", "0.0.0.0", "::", "*")


class Membership(msgspec.Struct, frozen=True, kw_only=True, omit_defaults=True):
    node_id: str
    role: str = ""  # manager | worker ("" in files written before multi-host: a manager)
    addr: str = ""  # advertised host
    managers: list[str] = []  # "host:port" of the managers (a worker's way in)
    listen: str = ""  # a manager's cluster port bind address "host:port"
    cluster_id: str = ""


def load(path: Path) -> Membership | None:
    try:
        return msgspec.json.decode(path.read_bytes(), type=Membership)
    except (OSError, msgspec.DecodeError, msgspec.ValidationError):
        return None


def save(path: Path, membership: Membership) -> None:
    """Atomically: a crash leaves the old file or the new one, never half of one."""
    tmp = path.with_suffix(".tmp")
    with open(tmp, "wb") as f:
        f.write(msgspec.json.encode(membership))
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)


def clear(path: Path) -> None:
    with contextlib.suppress(FileNotFoundError):
        path.unlink()


def split_host_port(addr: str) -> tuple[str, int | None]:
    """"h:p" / "[v6]:p" / "h" -> (host, port or None). Raises ValueError on a bad port."""
    addr = addr.strip()
    if addr.startswith("["):
        host, _, rest = addr[1:].partition("]")
        port = rest[1:] if rest.startswith(":") else ""
    elif addr.count(":") == 1:
        host, _, port = addr.partition(":")
    else:
        host, port = addr, ""
    if port and not port.isdigit():
        raise ValueError(f"invalid port in address {addr!r}")
    if port and not 0 <= int(port) < 65536:
        raise ValueError(f"port out of range in address {addr!r}")
    return host, int(port) if port else None


def advertised(advertise_addr: str, listen_addr: str, fallback_advertise: str = "") -> str:
    """The host this node advertises and a manager binds its cluster port on (module rules)."""
    for candidate in (advertise_addr, fallback_advertise):
        host, _ = split_host_port(candidate)
        if host not in _WILDCARDS:
            return host
    host, _ = split_host_port(listen_addr)
    return host if host not in _WILDCARDS else "127.0.0.1"


def effective_listen(request_listen: str, flag_listen: str) -> str:
    """The request's ListenAddr unless it is absent or the CLI's default, else `--listen-addr`."""
    request_listen = request_listen.strip()
    return flag_listen if request_listen in ("", CLI_DEFAULT_LISTEN) else request_listen


def cluster_port(listen: str) -> int:
    """The port of `listen` (0: any free port, the one bound is recorded), else 2377."""
    _, port = split_host_port(listen)
    return CLUSTER_PORT if port is None else port


def join_addr(addr: str) -> str:
    """A RemoteAddr as given to `swarm join` with the default port added when it has none."""
    host, port = split_host_port(addr)
    if not host or port == 0:
        raise ValueError(f"invalid remote address {addr!r}")
    return f"{host}:{port or CLUSTER_PORT}"

"""shoald's command-line flags and the host facts it advertises; used by shoal.daemon.main.

`parse_args(argv)` returns a `Config`; every flag is checked here so a mistake fails before
anything is touched on the host (e.g. a non-loopback `--host` is refused).
"""

from __future__ import annotations

import argparse
import dataclasses
import os
import platform
import socket
from pathlib import Path

from shoal.api.units import parse_bytes, parse_nano_cpus
from shoal.apiserver.docker.app import parse_host

DEFAULT_HOST = "unix:///run/shoal/shoal.sock"


@dataclasses.dataclass(frozen=True, kw_only=True)
class Config:
    data_root: Path
    hosts: list[str]
    listen_addr: str
    advertise_addr: str
    bridge_cidr: str
    labels: dict[str, str]
    nano_cpus: int
    memory_bytes: int
    load_images: list[Path]
    runtime: str
    log_level: str


def machine_memory_bytes() -> int:
    try:
        with open("/proc/meminfo", encoding="utf-8") as f:
            for line in f:
                if line.startswith("MemTotal:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    return 0


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="shoald", description="Shoal daemon: a Docker Swarm-compatible engine")
    p.add_argument("--data-root", default="/var/lib/shoal", help="state directory (default %(default)s)")
    p.add_argument("--host", "-H", action="append", default=[],
                   help="API socket: unix:///path or tcp://127.0.0.1:PORT "
                   f"(repeatable; default {DEFAULT_HOST})")
    p.add_argument("--listen-addr", default="0.0.0.0:2377",
                   help="cluster port address for swarm init when the request gives none or the CLI's "
                   "default; a wildcard host is never bound: see --advertise-addr (default %(default)s)")
    p.add_argument("--advertise-addr", default="",
                   help="address this node advertises and a manager binds its cluster port on "
                   "(default: the host of --listen-addr unless it is a wildcard, else 127.0.0.1)")
    p.add_argument("--bridge-cidr", default="172.28.0.0/16",
                   help="subnet of the host bridge for tasks; must not overlap a host route")
    p.add_argument("--label", action="append", default=[], help="engine label k=v (repeatable)")
    p.add_argument("--cpus", help="advertised CPUs (default: the machine's)")
    p.add_argument("--memory", help="advertised memory, e.g. 4g (default: the machine's)")
    p.add_argument("--load-image", action="append", default=[], type=Path,
                   help="image archive to load at start unless already present (repeatable)")
    p.add_argument("--runtime", choices=["crun", "runc"], default="crun")
    p.add_argument("--log-level", default="info", choices=["debug", "info", "warning", "error"])
    return p


def _labels(items: list[str], parser: argparse.ArgumentParser) -> dict[str, str]:
    out: dict[str, str] = {}
    for item in items:
        key, sep, value = item.partition("=")
        if not sep or not key:
            parser.error(f"invalid label {item!r}: expected k=v")
        out[key] = value
    return out


def parse_args(argv: list[str] | None = None) -> Config:
    parser = _parser()
    a = parser.parse_args(argv)
    hosts = a.host or [DEFAULT_HOST]
    for h in hosts:
        try:
            parse_host(h)
        except ValueError as e:
            parser.error(str(e))
    try:
        nano_cpus = parse_nano_cpus(a.cpus) if a.cpus else (os.cpu_count() or 1) * 1_000_000_000
        memory = parse_bytes(a.memory) if a.memory else machine_memory_bytes()
    except ValueError as e:
        parser.error(str(e))
    for image in a.load_image:
        if not image.is_file():
            parser.error(f"--load-image {image}: no such file")
    return Config(data_root=Path(a.data_root).absolute(), hosts=hosts, listen_addr=a.listen_addr,
                  advertise_addr=a.advertise_addr,
                  bridge_cidr=a.bridge_cidr, labels=_labels(a.label, parser), nano_cpus=nano_cpus,
                  memory_bytes=memory, load_images=list(a.load_image), runtime=a.runtime,
                  log_level=a.log_level)


def hostname() -> str:
    return socket.gethostname()


def kernel_version() -> str:
    return platform.release()


def operating_system() -> str:
    """PRETTY_NAME of /etc/os-release, as docker info shows it."""
    try:
        with open("/etc/os-release", encoding="utf-8") as f:
            for line in f:
                if line.startswith("PRETTY_NAME="):
                    return line.split("=", 1)[1].strip().strip('"')
    except OSError:
        pass
    return "Linux"

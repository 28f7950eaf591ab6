"""`shoald` (and `shoal daemon`): wires the store, image store, executor, logs, cluster control and
the Docker API together, serves until SIGTERM/SIGINT, then shuts down cleanly.

Only this package imports every layer. Shutdown stops the API, the agent, the manager, the host's
network (embedded DNS; the overlay devices stay for the containers), the log collector and the
store, but leaves containers running (like dockerd with live-restore): the next
start on the same data root adopts them, so a daemon upgrade or crash never restarts workloads.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import ipaddress
import logging
import os
import signal
import socket
import sys
from collections.abc import AsyncIterator
from pathlib import Path

from shoal.agent.exec.crun import CrunExecutor
from shoal.agent.images.store import ImageStore
from shoal.agent.logs import FileLogSource, LogCollector
from shoal.agent.network import overlay
from shoal.agent.network.dns import DnsServer, host_upstreams, parse_upstream
from shoal.agent.network.dnsrecords import DnsRecords
from shoal.agent.network.host import HostNetwork
from shoal.api.clock import SystemClock
from shoal.api.services import LogLine, LogSource
from shoal.api.types import EngineDescription, NodeDescription, NodeResources, Platform
from shoal.apiserver.docker.app import ApiServer, make_app
from shoal.apiserver.docker.context import ApiContext, EngineInfo
from shoal.apiserver.http import ENGINE_VERSION
from shoal.daemon import config as cfg
from shoal.daemon.cluster import ClusterControl
from shoal.daemon.images import preload_images
from shoal.store.sqlite import SqliteStore

log = logging.getLogger("shoald")


def setup_logging(config: cfg.Config) -> None:
    fmt = logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s")
    root = logging.getLogger()
    root.setLevel(config.log_level.upper())
    for handler in (logging.StreamHandler(sys.stderr), logging.FileHandler(config.data_root / "shoald.log")):
        handler.setFormatter(fmt)
        root.addHandler(handler)


def engine_info(config: cfg.Config) -> EngineInfo:
    return EngineInfo(hostname=cfg.hostname(), data_root=str(config.data_root),
                      kernel_version=cfg.kernel_version(), operating_system=cfg.operating_system(),
                      architecture=_machine(), ncpu=max(1, config.nano_cpus // 1_000_000_000),
                      mem_total=config.memory_bytes, labels=config.labels, runtime=config.runtime,
                      listen_addr=config.listen_addr)


def _machine() -> str:
    import platform

    return platform.machine()


def node_description(config: cfg.Config) -> NodeDescription:
    go_arch = {"x86_64": "x86_64", "aarch64": "aarch64"}.get(_machine(), _machine())
    return NodeDescription(
        hostname=cfg.hostname(), platform=Platform(architecture=go_arch, os="linux"),
        resources=NodeResources(nano_cpus=config.nano_cpus, memory_bytes=config.memory_bytes),
        engine=EngineDescription(engine_version=ENGINE_VERSION, labels=config.labels or None))


class RoutedLogSource:
    """`service logs` on a manager reads each task where it runs (over that node's session);
    with no manager running it reads this host's files."""

    def __init__(self, control: ClusterControl, local: LogSource) -> None:
        self._control, self._local = control, local

    def read(self, task_id: str, *, tail: int | None, since: dt.datetime | None,
             follow: bool) -> AsyncIterator[LogLine]:
        source = self._control.cluster_log_source() or self._local
        return source.read(task_id, tail=tail, since=since, follow=follow)


def usable_upstreams(upstreams: list[str]) -> list[str]:
    """The host's resolvers the embedded DNS can reach from shoald's network namespace: those it
    has a route to, and loopback ones only in the machine's own namespace (a lab host's netns
    shares the machine's /etc/resolv.conf but not its loopback). Unknown names get NXDOMAIN
    when none is left, rather than SERVFAIL from an unreachable forwarder."""
    try:
        own_netns = os.stat("/proc/self/ns/net").st_ino == os.stat("/proc/1/ns/net").st_ino
    except OSError:
        own_netns = True
    kept = []
    for upstream in upstreams:
        host, port = parse_upstream(upstream)
        if ipaddress.ip_address(host).is_loopback and not own_netns:
            continue
        with socket.socket(socket.AF_INET6 if ":" in host else socket.AF_INET, socket.SOCK_DGRAM) as s:
            try:
                s.connect((host, port))  # UDP: only a route lookup, nothing is sent
            except OSError:
                continue
        kept.append(upstream)
    return kept


async def _wait_for_signal() -> None:
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    await stop.wait()
    log.info("signal received: shutting down (containers keep running)")


async def run(config: cfg.Config) -> None:
    clock = SystemClock()
    store = SqliteStore(config.data_root / "store.db")
    await store.open()
    images = ImageStore(config.data_root / "images")
    await preload_images(images, config.load_images)
    capacity = NodeResources(nano_cpus=config.nano_cpus, memory_bytes=config.memory_bytes)
    # One embedded resolver per host; lab hosts have no resolv.conf nameservers: NXDOMAIN then.
    network = HostNetwork(DnsServer(DnsRecords(), upstreams=usable_upstreams(host_upstreams())))
    executor = CrunExecutor(data_root=config.data_root, images=images, bridge_cidr=config.bridge_cidr,
                            capacity=capacity, runtime=config.runtime, network=network)
    await executor.setup()  # refuses a --bridge-cidr that overlaps a host route
    overlay.set_name_tag(executor.paths.tag[:6])  # overlay devices never shared by two shoalds
    collector = LogCollector(config.data_root)
    local_logs = FileLogSource(config.data_root, collector)
    control = ClusterControl(store=store, executor=executor, clock=clock, state_dir=config.data_root,
                             description=lambda: node_description(config),
                             listen_addr=config.listen_addr, advertise_addr=config.advertise_addr,
                             logs=local_logs, network=network)
    context = ApiContext(store=store, images=images, logs=RoutedLogSource(control, local_logs),
                         swarm=control, clock=clock, engine=engine_info(config))
    api = ApiServer(make_app(context), config.hosts)
    try:
        collector.start()
        await control.resume()
        await api.start()
        log.info("shoald ready (data root %s)", config.data_root)
        await _wait_for_signal()
    finally:
        await api.stop()
        await control.stop()
        await network.close()
        await collector.stop()
        await store.close()
        log.info("shoald stopped")


def main(argv: list[str] | None = None) -> int:
    config = cfg.parse_args(argv)
    Path(config.data_root).mkdir(parents=True, exist_ok=True)
    setup_logging(config)
    try:
        asyncio.run(run(config))
    except ValueError as e:  # e.g. a --bridge-cidr overlapping a host route
        log.error("%s", e)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())

"""Benchmark (issue 3c): a real manager with many "hollow" hosts (bench/hollow.py).

One shoald (tests/daemon.py) does `swarm init` with its cluster port on 127.0.0.1; this process
joins N hollow nodes to it (each its own key, certificate and mutual-TLS session, one asyncio loop
on a background thread), creates services totalling T tasks (100 replicas each, constrained to
`node.role==worker` so none lands on the manager's own real agent), waits until the manager
reports all T running, lets it settle, then samples the manager's RSS and CPU (utime + stime
from /proc/<pid>/stat over --sample-s seconds) at steady state: heartbeats only.

Run: .venv/bin/python -m bench.bench_hollow [--sizes 10x1000,100x10000,1000x100000]
     [--heartbeat-s 0 (cluster default)] [--sample-s 10] [--settle-s 5]
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import os
import resource
import socket
import tempfile
import threading
import time
from collections.abc import Coroutine, Iterator
from pathlib import Path
from typing import Any, TypeVar

from bench.common import table
from bench.hollow import HollowAgent, hollow_description, tls_connector
from shoal.agent.identity import NodeIdentity, join
from tests.daemon import Daemon

T = TypeVar("T")
REPLICAS_PER_SERVICE = 100
JOIN_CONCURRENCY = 16
TARGET_RSS_MIB = 400


def raise_nofile() -> int:
    _soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    want = hard if hard != resource.RLIM_INFINITY else 1 << 20
    with contextlib.suppress(ValueError, OSError):
        resource.setrlimit(resource.RLIMIT_NOFILE, (want, want))
    return resource.getrlimit(resource.RLIMIT_NOFILE)[0]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def proc_cpu_s(pid: int) -> float:
    with open(f"/proc/{pid}/stat") as f:
        fields = f.read().rpartition(")")[2].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")  # utime + stime


def proc_status(pid: int, key: str) -> float:
    """A /proc/<pid>/status value in MiB (VmRSS, VmHWM)."""
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith(key + ":"):
                return int(line.split()[1]) / 1024
    return 0.0


def loadavg() -> str:
    with open("/proc/loadavg") as f:
        return " ".join(f.read().split()[:3])


class Loop:
    """An asyncio loop on a background thread, for the hollow agents."""

    def __init__(self) -> None:
        self.loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self.loop.run_forever, name="hollow-loop", daemon=True)
        self._thread.start()

    def run(self, coro: Coroutine[Any, Any, T], timeout: float | None = None) -> T:
        return asyncio.run_coroutine_threadsafe(coro, self.loop).result(timeout)

    def close(self) -> None:
        self.loop.call_soon_threadsafe(self.loop.stop)
        self._thread.join(10)


class Fleet:
    """N hollow nodes joined to one manager, each running its session on the shared loop."""

    def __init__(self, loop: Loop, addr: str, token: str) -> None:
        self._loop, self._addr, self._token = loop, addr, token
        self.agents: list[HollowAgent] = []
        self._runs: list[asyncio.Task[None]] = []

    async def _join_all(self, start: int, count: int) -> list[NodeIdentity]:
        gate = asyncio.Semaphore(JOIN_CONCURRENCY)

        async def one(i: int) -> NodeIdentity:
            async with gate:
                for attempt in range(5):
                    try:
                        return await join(self._addr, self._token, hostname=f"hollow{i:05d}",
                                          advertise_addr="127.0.0.1", timeout_s=60)
                    except Exception:
                        if attempt == 4:
                            raise
                        await asyncio.sleep(0.5 * (attempt + 1))
                raise AssertionError("unreachable")

        return list(await asyncio.gather(*(one(i) for i in range(start, start + count))))

    async def _start(self, identities: list[NodeIdentity]) -> None:
        for identity in identities:
            agent = HollowAgent(identity.node_id, hollow_description(f"hollow-{identity.node_id[:8]}"),
                                addr="127.0.0.1")
            self.agents.append(agent)
            self._runs.append(asyncio.create_task(agent.run(tls_connector(self._addr, identity))))

    def grow(self, total: int) -> float:
        """Join and start nodes until there are `total`; returns the seconds the joins took."""
        count = total - len(self.agents)
        if count <= 0:
            return 0.0
        start = time.perf_counter()
        identities = self._loop.run(self._join_all(len(self.agents), count))
        joined = time.perf_counter() - start
        self._loop.run(self._start(identities))
        return joined

    def registered(self) -> int:
        return sum(a.registered.is_set() for a in self.agents)

    def stop(self) -> None:
        async def stop_all() -> None:
            for agent in self.agents:
                agent.stop()
            await asyncio.wait_for(asyncio.gather(*self._runs, return_exceptions=True), 60)

        with contextlib.suppress(Exception):
            self._loop.run(stop_all())


@contextlib.contextmanager
def manager_daemon(tmp: Path, ssl_buffer_kib: int) -> Iterator[Daemon]:
    """The manager's shoald; with `ssl_buffer_kib`, a sitecustomize on its PYTHONPATH first sets
    asyncio's per-connection TLS read buffer (an experiment for a proposed fix, not Shoal code)."""
    saved = os.environ.get("PYTHONPATH")
    if ssl_buffer_kib:
        site = tmp / "site"
        site.mkdir()
        (site / "sitecustomize.py").write_text(
            f"import asyncio.sslproto\nasyncio.sslproto.SSLProtocol.max_size = {ssl_buffer_kib * 1024}\n")
        os.environ["PYTHONPATH"] = os.pathsep.join(p for p in (str(site), saved) if p)
    daemon = Daemon(tmp, extra_args=["--log-level", "info"])
    try:
        daemon.start()
    finally:
        if saved is None:
            os.environ.pop("PYTHONPATH", None)
        else:
            os.environ["PYTHONPATH"] = saved
    try:
        yield daemon
    finally:
        daemon.stop()


def ready_workers(daemon: Daemon) -> int:
    nodes = daemon.api("GET", "/v1.50/nodes").json()
    return sum(n["Spec"].get("Role") == "worker" and n["Status"]["State"] == "ready" for n in nodes)


def running_total(daemon: Daemon) -> int:
    services = daemon.api("GET", "/v1.50/services?status=true").json()
    return sum(int((s.get("ServiceStatus") or {}).get("RunningTasks", 0)) for s in services)


def wait_until(what: str, predicate: Any, timeout_s: float, interval_s: float) -> float:
    start = time.perf_counter()
    while True:
        if predicate():
            return time.perf_counter() - start
        if time.perf_counter() - start > timeout_s:
            raise TimeoutError(f"timed out after {timeout_s:.0f} s waiting for {what}")
        time.sleep(interval_s)


def create_services(daemon: Daemon, prefix: str, first: int, count: int) -> None:
    for i in range(first, first + count):
        spec = {"Name": f"{prefix}{i}",
                "TaskTemplate": {"ContainerSpec": {"Image": "busybox", "Args": ["sleep", "100000"]},
                                 "Placement": {"Constraints": ["node.role==worker"]}},
                "Mode": {"Replicated": {"Replicas": REPLICAS_PER_SERVICE}}}
        daemon.api("POST", "/v1.50/services/create", json=spec).raise_for_status()


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--sizes", default="10x1000,100x10000,1000x100000",
                        help="comma-separated HOSTSxTASKS, run in one cluster, growing")
    parser.add_argument("--heartbeat-s", type=float, default=0.0, help="0: the cluster default")
    parser.add_argument("--settle-s", type=float, default=5.0)
    parser.add_argument("--sample-s", type=float, default=10.0)
    parser.add_argument("--timeout-s", type=float, default=900.0)
    parser.add_argument("--ssl-buffer-kib", type=int, default=0,
                        help="experiment: the manager's asyncio SSLProtocol read buffer (Python's default "
                             "256 KiB per TLS connection), set through a sitecustomize on its PYTHONPATH")
    args = parser.parse_args()
    sizes = [tuple(int(x) for x in s.split("x")) for s in args.sizes.split(",")]
    nofile = raise_nofile()
    print(f"RLIMIT_NOFILE {nofile}; load average before: {loadavg()}", flush=True)
    rows: list[list[object]] = []
    port = free_port()
    addr = f"127.0.0.1:{port}"
    loop = Loop()
    with tempfile.TemporaryDirectory(prefix="shoal-bench-hollow-") as tmp, \
            manager_daemon(Path(tmp), args.ssl_buffer_kib) as daemon:
        init: dict[str, Any] = {"ListenAddr": addr, "AdvertiseAddr": "127.0.0.1"}
        if args.heartbeat_s:
            init["Spec"] = {"Dispatcher": {"HeartbeatPeriod": int(args.heartbeat_s * 1e9)}}
        daemon.api("POST", "/v1.50/swarm/init", json=init).raise_for_status()
        token = daemon.api("GET", "/v1.50/swarm").json()["JoinTokens"]["Worker"]
        fleet = Fleet(loop, addr, token)
        services = 0
        try:
            for hosts, tasks in sizes:
                joined_s = fleet.grow(hosts)
                wait_until(f"{hosts} hollow nodes ready", lambda h=hosts: ready_workers(daemon) >= h,
                           args.timeout_s, 0.5)
                print(f"{hosts} hosts joined in {joined_s:.1f} s, all ready; manager RSS "
                      f"{proc_status(daemon.pid, 'VmRSS'):.0f} MiB", flush=True)
                want = tasks // REPLICAS_PER_SERVICE
                start = time.perf_counter()
                create_services(daemon, "h", services, want - services)  # names go on from the last size
                created_s = time.perf_counter() - start
                services = want
                running_s = created_s + wait_until(
                    f"{tasks} tasks running", lambda t=tasks: running_total(daemon) >= t, args.timeout_s,
                    max(0.5, tasks / 50_000))
                print(f"{tasks} tasks running {running_s:.1f} s after the first create "
                      f"(creates took {created_s:.1f} s)", flush=True)
                time.sleep(args.settle_s)
                pid = daemon.pid
                cpu0, t0 = proc_cpu_s(pid), time.perf_counter()
                time.sleep(args.sample_s)
                cpu = (proc_cpu_s(pid) - cpu0) / (time.perf_counter() - t0) * 100
                rss, hwm = proc_status(pid, "VmRSS"), proc_status(pid, "VmHWM")
                beats = sum(a.frames_out for a in fleet.agents)
                rows.append([f"{hosts:,}", f"{tasks:,}", f"{joined_s:.1f}", f"{running_s:.1f}",
                             f"{rss:.0f}", f"{hwm:.0f}", f"{cpu:.1f}", loadavg()])
                print(f"steady state: RSS {rss:.0f} MiB (peak {hwm:.0f}), CPU {cpu:.1f} %, "
                      f"{fleet.registered()} sessions, {beats} frames sent so far", flush=True)
        finally:
            fleet.stop()
            loop.close()
    period = f"{args.heartbeat_s:g} s" if args.heartbeat_s else "default (2 s)"
    variant = f", manager TLS read buffer {args.ssl_buffer_kib} KiB" if args.ssl_buffer_kib else ""
    table(f"(3c) hollow hosts on one manager, heartbeat {period}{variant}: manager (shoald) at steady state",
          ["hosts", "tasks", "joins (s)", "create -> all running (s)", "RSS (MiB)", "peak RSS (MiB)",
           "CPU %", "load avg"], rows)
    print(f"Target: <= {TARGET_RSS_MIB} MB RSS with 1,000 hosts and 100k tasks. CPU % is of one core, "
          f"sampled over {args.sample_s:g} s after {args.settle_s:g} s of settling.")


if __name__ == "__main__":
    main()

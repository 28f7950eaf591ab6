"""Shared parts of the benchmarks: a daemon in a swarm, an API client, percentiles and tables."""

from __future__ import annotations

import json
import statistics
import time
from collections.abc import Callable
from typing import Any

from tests.daemon import Daemon


def percentile(values: list[float], pct: float) -> float:
    ordered = sorted(values)
    k = max(0, min(len(ordered) - 1, round(pct / 100 * (len(ordered) - 1))))
    return ordered[k]


def table(title: str, header: list[str], rows: list[list[object]]) -> str:
    cells = [header] + [[str(c) for c in row] for row in rows]
    widths = [max(len(r[i]) for r in cells) for i in range(len(header))]
    def row(values: list[str]) -> str:
        return "| " + " | ".join(v.ljust(w) for v, w in zip(values, widths, strict=True)) + " |"

    lines = [f"### {title}", "", row(header), "|" + "|".join("-" * (w + 2) for w in widths) + "|"]
    lines += [row(r) for r in cells[1:]]
    out = "\n".join(lines)
    print(out + "\n", flush=True)
    return out


def poll(predicate: Callable[[], bool], timeout_s: float, interval_s: float = 0.002) -> float:
    """Seconds until predicate() holds; raises TimeoutError after timeout_s."""
    start = time.perf_counter()
    while not predicate():
        if time.perf_counter() - start > timeout_s:
            raise TimeoutError("condition not met")
        time.sleep(interval_s)
    return time.perf_counter() - start


def create_service(daemon: Daemon, name: str, replicas: int, args: list[str]) -> str:
    # Init (tini) so that removal takes milliseconds instead of the 10 s grace of a PID-1 sleep.
    spec = {"Name": name, "TaskTemplate": {"ContainerSpec": {"Image": "busybox", "Args": args, "Init": True}},
            "Mode": {"Replicated": {"Replicas": replicas}}}
    resp = daemon.api("POST", "/v1.50/services/create", json=spec)
    resp.raise_for_status()
    return str(resp.json()["ID"])


def running_count(daemon: Daemon, service_id: str) -> int:
    filters = json.dumps({"service": {service_id: True}, "desired-state": {"running": True}})
    tasks: list[dict[str, Any]] = daemon.api("GET", f"/v1.50/tasks?filters={filters}").json()
    return sum(t["Status"]["State"] == "running" for t in tasks)


def remove_service_and_wait(daemon: Daemon, service_id: str, timeout_s: float = 120) -> None:
    daemon.api("DELETE", f"/v1.50/services/{service_id}")
    filters = json.dumps({"service": {service_id: True}})
    poll(lambda: not daemon.api("GET", f"/v1.50/tasks?filters={filters}").json(), timeout_s, 0.05)


def rss_mib(pid: int) -> float:
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    return 0.0


def summary_ms(samples_s: list[float]) -> tuple[str, str, str]:
    ms = [s * 1000 for s in samples_s]
    return f"{statistics.median(ms):.1f}", f"{percentile(ms, 99):.1f}", f"{max(ms):.1f}"

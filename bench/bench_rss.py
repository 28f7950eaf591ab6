"""Benchmark (c): shoald's resident memory with many one-task `sleep` services.

Creates one-task services in steps and reports shoald's RSS once every task runs.
Run: .venv/bin/python -m bench.bench_rss [--steps 0,50,1000]
"""

from __future__ import annotations

import argparse
import json
import tempfile
from pathlib import Path

from bench.common import create_service, poll, rss_mib, table
from tests.daemon import Daemon


def running_total(daemon: Daemon) -> int:
    filters = json.dumps({"desired-state": {"running": True}})
    tasks = daemon.api("GET", f"/v1.50/tasks?filters={filters}").json()
    return sum(t["Status"]["State"] == "running" for t in tasks)


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--steps", default="0,50,1000")
    args = parser.parse_args()
    steps = [int(s) for s in args.steps.split(",")]
    rows: list[list[object]] = []
    with tempfile.TemporaryDirectory(prefix="shoal-bench-") as tmp, \
            Daemon(Path(tmp), bridge_prefix=20) as daemon:
        daemon.api("POST", "/v1.50/swarm/init", json={"ListenAddr": "127.0.0.1:2377"}).raise_for_status()
        made = 0
        for target in steps:
            while made < target:
                create_service(daemon, f"s{made}", 1, ["sleep", "100000"])
                made += 1
            poll(lambda t=target: running_total(daemon) == t, 900, 0.5)  # type: ignore[misc]
            rows.append([target, f"{rss_mib(daemon.pid):.1f}"])
    table("(c) shoald RSS with N one-task services of sleep (MiB)", ["services", "shoald RSS"], rows)
    print("Docker for comparison (measured elsewhere on this kind of machine): dockerd + containerd 180 MiB, "
          "plus a containerd-shim per task.")


if __name__ == "__main__":
    main()

"""Benchmark (b): `service create --replicas N` until N tasks run, for N = 1, 10, 50, 100.

Run: .venv/bin/python -m bench.bench_replicas [--sizes 1,10,50,100] [--repeat 3]
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time
from pathlib import Path

from bench.common import create_service, poll, remove_service_and_wait, running_count, table
from tests.daemon import Daemon


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--sizes", default="1,10,50,100")
    parser.add_argument("--repeat", type=int, default=3)
    args = parser.parse_args()
    sizes = [int(s) for s in args.sizes.split(",")]
    rows: list[list[object]] = []
    with tempfile.TemporaryDirectory(prefix="shoal-bench-") as tmp, Daemon(Path(tmp)) as daemon:
        daemon.api("POST", "/v1.50/swarm/init", json={"ListenAddr": "127.0.0.1:2377"}).raise_for_status()
        for n in sizes:
            samples = []
            for r in range(args.repeat):
                start = time.perf_counter()
                sid = create_service(daemon, f"rep{n}x{r}", n, ["sleep", "1000"])
                poll(lambda sid=sid, n=n: running_count(daemon, sid) == n, 300, 0.01)  # type: ignore[misc]
                samples.append(time.perf_counter() - start)
                remove_service_and_wait(daemon, sid, 300)
            rows.append([n, f"{statistics.median(samples):.2f}", f"{min(samples):.2f}", f"{max(samples):.2f}",
                         f"{n / statistics.median(samples):.1f}"])
    table(f"(b) service create --replicas N -> N running (s, {args.repeat} runs each)",
          ["N", "median", "min", "max", "tasks/s"], rows)


if __name__ == "__main__":
    main()

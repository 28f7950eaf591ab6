"""Run every benchmark in turn (`make bench`). Each prints its own table.

Issue 3 and 4 benchmarks that need a lab (bench_host_loss, bench_mesh) run as root, like the
tests. Left out because it takes ~15 minutes: `bench.bench_hollow` (1,000 hollow hosts, 100k
tasks); run it by hand (docs/benchmarks.md, section 3c).
"""

from __future__ import annotations

import subprocess
import sys

BENCHES = [
    ("bench.bench_task_start", []),
    ("bench.bench_replicas", []),
    ("bench.bench_rss", []),
    ("bench.bench_scheduler", ["--nodes", "1000"]),
    ("bench.bench_host_loss", ["--heartbeats", "0", "--repeat", "1"]),
    ("bench.bench_mesh", []),
]

for module, args in BENCHES:
    print(f"\n## {module} {' '.join(args)}\n", flush=True)
    subprocess.run([sys.executable, "-m", module, *args], check=True)

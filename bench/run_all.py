"""Run every benchmark in turn (`make bench`). Each prints its own table."""

from __future__ import annotations

import subprocess
import sys

for module in ("bench.bench_task_start", "bench.bench_replicas", "bench.bench_rss"):
    print(f"\n## {module}\n", flush=True)
    subprocess.run([sys.executable, "-m", module], check=True)

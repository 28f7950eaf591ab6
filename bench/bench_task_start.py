"""Benchmark (a): one task, service create -> RUNNING, p50/p99 over N runs, beside the raw crun floor.

The floor is what the OCI runtime alone costs for the same container: mount an overlay over the
busybox image, write config.json, `crun run -d`, in the same run and on the same machine.
Run: .venv/bin/python -m bench.bench_task_start [--runs 50]
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import tarfile
import tempfile
import time
from pathlib import Path

from bench.common import create_service, poll, remove_service_and_wait, running_count, summary_ms, table
from tests.daemon import Daemon

ROOT = Path(__file__).resolve().parent.parent


def crun_floor(runs: int, work: Path) -> list[float]:
    """Raw crun: overlay mount + config.json + `crun run -d` of `sleep 1000`, then delete."""
    lower = work / "lower"
    with tarfile.open(ROOT / "build/images/busybox.tar") as archive:
        manifest = json.load(archive.extractfile("manifest.json"))  # type: ignore[arg-type]
        with tarfile.open(fileobj=archive.extractfile(manifest[0]["Layers"][0])) as layer:
            layer.extractall(lower, filter="fully_trusted")
    state = work / "state"
    samples = []
    for i in range(runs):
        bundle = work / f"b{i}"
        for d in ("upper", "work", "rootfs"):
            (bundle / d).mkdir(parents=True)
        start = time.perf_counter()
        subprocess.run(["mount", "-t", "overlay", "overlay", "-o",
                        f"lowerdir={lower},upperdir={bundle}/upper,workdir={bundle}/work",
                        str(bundle / "rootfs")], check=True)
        subprocess.run(["crun", "spec"], cwd=bundle, check=True)
        spec = json.loads((bundle / "config.json").read_text())
        spec["process"]["terminal"] = False
        spec["process"]["args"] = ["sleep", "1000"]
        spec["linux"]["cgroupsPath"] = f"/shoal-bench/floor{i}"
        (bundle / "config.json").write_text(json.dumps(spec))
        with open(bundle / "out.log", "wb") as log:
            subprocess.run(["crun", "--root", str(state), "run", "-d", f"floor{i}"], cwd=bundle,
                           stdin=subprocess.DEVNULL, stdout=log, stderr=log, check=True)
        samples.append(time.perf_counter() - start)
        subprocess.run(["crun", "--root", str(state), "delete", "-f", f"floor{i}"], check=True)
        subprocess.run(["umount", str(bundle / "rootfs")], check=True)
    shutil.rmtree(state, ignore_errors=True)
    for parent in Path("/sys/fs/cgroup").glob("*/shoal-bench"):
        parent.rmdir()
    return samples


def shoal_runs(runs: int, work: Path) -> list[float]:
    samples = []
    with Daemon(work / "daemon") as daemon:
        daemon.api("POST", "/v1.50/swarm/init", json={"ListenAddr": "127.0.0.1:2377"}).raise_for_status()
        for i in range(runs):
            start = time.perf_counter()
            sid = create_service(daemon, f"one{i}", 1, ["sleep", "1000"])
            poll(lambda sid=sid: running_count(daemon, sid) == 1, 60)  # type: ignore[misc]
            samples.append(time.perf_counter() - start)
            remove_service_and_wait(daemon, sid)
    return samples


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--runs", type=int, default=50)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="shoal-bench-") as tmp:
        work = Path(tmp)
        floor = crun_floor(args.runs, work / "floor")
        shoal = shoal_runs(args.runs, work)
    os.sync()
    rows = [["raw crun (overlay + config + run -d)", *summary_ms(floor)],
            ["shoal: service create -> task RUNNING", *summary_ms(shoal)]]
    table(f"(a) one task to RUNNING, {args.runs} runs (ms)", ["what", "p50", "p99", "max"], rows)
    ratio = sorted(shoal)[len(shoal) // 2] / sorted(floor)[len(floor) // 2]
    print(f"shoal p50 / crun p50 = {ratio:.1f}x")


if __name__ == "__main__":
    main()

"""Benchmark (issue 4): the routing mesh and VIPs against a task's own address, on a 3-host lab.

A fresh `shoal lab` of 3 hosts loads busybox and `nginx:bench` (tools/build_nginx_image.py:
Debian's nginx with its libraries, 1 worker, no access log, a 612-byte index.html; built here if
build/bench/nginx.tar is missing). On an overlay `bench`:

- service `web`: nginx, 1 replica pinned to node3, published 8080 -> 80 (ingress);
- service `wrkc`: busybox `sleep` pinned to node1, the client task.

wrk (Debian's `wrk`, `-t1 -cC -dD --latency`, each row `--repeat` times in alternating order
(ABCD DCBA), all in the same lab and run; RPS is the mean, latencies the median of the runs) is
started from the root filesystem inside a network namespace with `nsenter -n`:

| row | wrk runs in | target | path |
|---|---|---|---|
| direct | the client task (node1) | the nginx task's address on `bench` | VXLAN node1 -> node3 |
| VIP | the client task (node1) | the service VIP on `bench` | + nft DNAT in the client task |
| mesh via node2 | node1's host netns | node2's address:8080 | node2 DNAT, VXLAN to node3; replies via node2 |
| mesh via node3 | node1's host netns | node3's address:8080 | underlay -> node3 DNAT -> local bridge |

"direct" is the baseline: the same client host and the same server task, no mesh. The ratio is
mesh RPS / direct RPS (target >= 90 %).

Then "RUNNING -> receives traffic through its VIP": a service `late` (nginx, on `bench`, no
constraint) is scaled 1 -> 2 -> ... -> 1+STEPS; a prober in the client task opens a new TCP
connection to the VIP every ~2 ms (`GET /host`: nginx answers its hostname, which is the task's
name) and logs (wall clock, answer). Per new task: its `Status.Timestamp` when `GET /tasks` first
shows it `running` (the agent's report), and the first answer from it through the VIP; the
difference is reported (all hosts share the machine's clock). Refused or failed probes are counted.

Run (root; needs wrk, nginx-light, busybox-static):
    .venv/bin/python -m bench.bench_mesh [--duration 6] [--repeat 2] [--connections 32] [--steps 5]
"""

from __future__ import annotations

import argparse
import contextlib
import datetime as dt
import itertools
import os
import re
import shutil
import statistics
import subprocess
import sys
from collections import Counter
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from bench.common import percentile, table
from shoal.lab import up as lab_up
from tests.cluster import (
    create_network,
    create_spec,
    running_tasks,
    scale,
    service_spec,
    service_vip,
    task_address,
    task_pid,
    tasks,
    wait_running,
)
from tests.daemon import BUSYBOX_TAR, wait_for
from tests.lab import Lab

ROOT = Path(__file__).resolve().parent.parent
NGINX_TAR = ROOT / "build" / "bench" / "nginx.tar"
PUBLISHED = 8080
NGINX = "nginx:bench"
SLEEP = ["sleep", "100000"]
NGINX_ARGS = ["nginx", "-c", "/etc/nginx/nginx.conf"]
PROBER = r"""
import socket, sys, time
host, stop, deadline = sys.argv[1], sys.argv[2], time.time() + float(sys.argv[3])
req = b"GET /host HTTP/1.0\r\nHost: x\r\n\r\n"
out = sys.stdout
while time.time() < deadline:
    try:
        with socket.create_connection((host, 80), timeout=1) as s:
            s.sendall(req)
            data = b""
            while chunk := s.recv(4096):
                data += chunk
        now = time.time()
        body = data.split(b"\r\n\r\n", 1)[-1].decode().strip()
        out.write(f"{now:.6f} {body or '-'}\n")
    except OSError as e:
        out.write(f"{time.time():.6f} ! {type(e).__name__}\n")
    out.flush()
    try:
        open(stop).close()
        break
    except FileNotFoundError:
        pass
    time.sleep(0.002)
"""


class BenchLab(Lab):
    """tests.lab.Lab with the images given here (busybox and nginx:bench)."""

    def __init__(self, images: list[Path], **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.images = images

    def __enter__(self) -> BenchLab:
        try:
            lab_up.up(self.name, self.nodes, self.images, dispatcher_heartbeat_ns=self.heartbeat_ns)
        except BaseException:
            print(self.logs_tail(), file=sys.stderr)
            self.down()
            raise
        return self


def running(lab: Lab, service: str, count: int) -> None:
    try:
        wait_running(lab, service, count)
    except AssertionError as e:
        states = [(t["Status"]["State"], t["Status"].get("Err")) for t in tasks(lab, service)]
        raise RuntimeError(f"{e}: {states}\n{lab.logs_tail()}") from None


# ------------------------------------------------------------------------------------ wrk
@dataclass
class WrkResult:
    rps: float
    p50_ms: float
    p99_ms: float
    errors: int


def _ms(text: str) -> float:
    m = re.fullmatch(r"([\d.]+)(us|ms|s|m)", text)
    if not m:
        raise ValueError(f"wrk latency {text!r}")
    return float(m.group(1)) * {"us": 1e-3, "ms": 1.0, "s": 1e3, "m": 6e4}[m.group(2)]


def parse_wrk(out: str) -> WrkResult:
    rps = float(re.search(r"Requests/sec:\s+([\d.]+)", out).group(1))  # type: ignore[union-attr]
    dist = dict(re.findall(r"^\s+(\d+)%\s+(\S+)$", out, re.M))
    errors = sum(int(n) for n in re.findall(r"(?:connect|read|write|timeout) (\d+)", out))
    m = re.search(r"Non-2xx or 3xx responses: (\d+)", out)
    errors += int(m.group(1)) if m else 0
    return WrkResult(rps, _ms(dist["50"]), _ms(dist["99"]), errors)


def wrk(netns_of_pid: int, url: str, duration: int, connections: int) -> WrkResult:
    argv = ["nsenter", "-t", str(netns_of_pid), "-n", "wrk", "-t1", f"-c{connections}", f"-d{duration}s",
            "--latency", url]
    r = subprocess.run(argv, capture_output=True, text=True, timeout=duration + 30)
    if r.returncode != 0 or "Requests/sec" not in r.stdout:
        raise RuntimeError(f"wrk {url}: rc {r.returncode}\n{r.stdout}\n{r.stderr}")
    return parse_wrk(r.stdout)


def host_netns_pid(lab: Lab, host: str) -> int:
    """A PID in the host's network namespace: its shoald (wrk joins that netns with nsenter)."""
    pid = lab.state.host(host).pid
    assert pid, f"{host} has no shoald PID"
    return pid


# ------------------------------------------------------------------------------------ VIP latency
def status_time(task: dict[str, Any]) -> float:
    """Status.Timestamp (RFC 3339, up to ns) as a Unix time."""
    ts = task["Status"]["Timestamp"]
    m = re.match(r"(\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d)(?:\.(\d+))?(Z|[+-]\d\d:\d\d)$", ts)
    assert m, ts
    frac = (m.group(2) or "0")[:6].ljust(6, "0")
    zone = "+00:00" if m.group(3) == "Z" else m.group(3)
    return dt.datetime.fromisoformat(f"{m.group(1)}.{frac}{zone}").timestamp()


def vip_latency(lab: Lab, client_pid: int, net: str, steps: int) -> tuple[list[float], int, int, float]:
    """Seconds from RUNNING to the first answer through the VIP, per new task; probes; failed probes;
    the median gap between probes (with n backends in round robin, a new one is asked about once
    every n probes: that is the resolution)."""
    create_spec(lab, service_spec("late", NGINX_ARGS, image=NGINX, networks=[net]))
    running(lab, "late", 1)
    vip = wait_for(lambda: service_vip(lab, "late", net), 30, "the VIP of late")
    stop = Path(f"/run/shoal/bench-mesh-{os.getpid()}.stop")
    log = stop.with_suffix(".log")
    stop.unlink(missing_ok=True)
    samples: list[tuple[str, float]] = []  # (task ID, RUNNING timestamp)
    with open(log, "w") as out:
        prober = subprocess.Popen(["nsenter", "-t", str(client_pid), "-n", sys.executable, "-c", PROBER, vip,
                                   str(stop), str(30 + 20 * steps)], stdout=out, text=True)
    try:
        wait_for(lambda: log.read_text().count("\n") >= 10, 10, "the prober's first answers")
        for n in range(2, steps + 2):
            known = {t["ID"] for t in tasks(lab, "late")}
            scale(lab, "late", n)
            new = wait_for(lambda k=known: next((t for t in running_tasks(lab, "late")  # type: ignore[misc]
                                                 if t["ID"] not in k), None), 60, f"replica {n} of late")
            samples.append((new["ID"], status_time(new)))
            wait_for(lambda i=new["ID"]: i in log.read_text(), 20,  # type: ignore[misc]
                     f"an answer from replica {n} through the VIP", interval=0.05)
    finally:
        stop.touch()
        prober.wait(timeout=30)
        text = log.read_text()
        stop.unlink(missing_ok=True)
        log.unlink(missing_ok=True)
    out_lines = text.splitlines()
    lines = [line.split(" ", 1) for line in out_lines if " " in line]
    failures = sum(1 for _, body in lines if body.startswith("!"))
    delays = []
    for task_id, running_at in samples:
        first = next((float(t) for t, body in lines if body.endswith(task_id)), None)
        if first is None:
            answers = Counter(body for _, body in lines)
            raise RuntimeError(f"task {task_id} never answered through the VIP; answers: {answers}")
        delays.append(first - running_at)
    stamps = sorted(float(t) for t, _ in lines)
    gaps = [b - a for a, b in itertools.pairwise(stamps)] or [0.0]
    return delays, len(lines), failures, statistics.median(gaps)


# ------------------------------------------------------------------------------------ main
def ensure_nginx_image() -> None:
    if not NGINX_TAR.is_file():
        subprocess.run([sys.executable, str(ROOT / "tools" / "build_nginx_image.py"), str(NGINX_TAR)],
                       check=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--duration", type=int, default=6, help="seconds per wrk run")
    parser.add_argument("--repeat", type=int, default=2, help="wrk runs per path (order alternates)")
    parser.add_argument("--connections", type=int, default=32)
    parser.add_argument("--steps", type=int, default=5, help="scale-ups timed for RUNNING -> traffic")
    args = parser.parse_args()
    for tool in ("wrk", "nsenter", "crun"):
        if shutil.which(tool) is None:
            sys.exit(f"bench_mesh needs {tool} (make apt)")
    ensure_nginx_image()
    with BenchLab([BUSYBOX_TAR, NGINX_TAR], nodes=3, name="bmesh" + os.urandom(1).hex()[:2],
                  dispatcher_heartbeat="1s") as lab:
        lab.wait_ready()
        net = create_network(lab, "bench")
        create_spec(lab, service_spec("web", NGINX_ARGS, image=NGINX, networks=[net], publish={PUBLISHED: 80},
                                      placement={"Constraints": ["node.hostname==node3"]}))
        create_spec(lab, service_spec("wrkc", SLEEP, networks=[net],
                                      placement={"Constraints": ["node.hostname==node1"]}))
        for name in ("web", "wrkc"):
            running(lab, name, 1)
        web = running_tasks(lab, "web")[0]
        client_pid = task_pid(running_tasks(lab, "wrkc")[0])
        node1 = host_netns_pid(lab, "node1")
        task_ip, vip = task_address(web, net), service_vip(lab, "web", net)
        rows = [("direct: client task -> task address", client_pid, f"http://{task_ip}/"),
                ("VIP: client task -> service VIP", client_pid, f"http://{vip}/"),
                ("mesh: node1 -> node2:8080 (task on node3)", node1,
                 f"http://{lab.address('node2')}:{PUBLISHED}/"),
                ("mesh: node1 -> node3:8080 (task on node3)", node1,
                 f"http://{lab.address('node3')}:{PUBLISHED}/")]
        for _, pid, url in rows:  # every path answers before anything is measured
            wait_for(lambda p=pid, u=url: subprocess.run(  # type: ignore[misc]
                ["nsenter", "-t", str(p), "-n", "curl", "-sf", "--max-time", "2", "-o", "/dev/null", u]
            ).returncode == 0, 30, f"{url} to answer")
        runs: dict[str, list[WrkResult]] = {what: [] for what, _, _ in rows}
        for rep in range(args.repeat):  # ABCD DCBA ...: drift on a shared machine hits every row alike
            for what, pid, url in rows if rep % 2 == 0 else rows[::-1]:
                runs[what].append(wrk(pid, url, args.duration, args.connections))
        base = statistics.mean(r.rps for r in runs[rows[0][0]])
        out = []
        for what, rs in runs.items():
            rps = statistics.mean(r.rps for r in rs)
            out.append([what, f"{rps:,.0f}", " / ".join(f"{r.rps / 1000:.1f}k" for r in rs),
                        f"{statistics.median(r.p50_ms for r in rs):.2f}",
                        f"{statistics.median(r.p99_ms for r in rs):.2f}", sum(r.errors for r in rs),
                        f"{rps / base:.0%}"])
        table(f"Through the routing mesh vs straight to the task (wrk -t1 -c{args.connections} "
              f"-d{args.duration}s x {args.repeat}, nginx 1 worker)",
              ["path", "requests/s (mean)", "runs", "p50 (ms)", "p99 (ms)", "errors", "vs direct"], out)
        delays, probes, failures, gap = vip_latency(lab, client_pid, net, args.steps)
        ms = [d * 1000 for d in delays]
        table("RUNNING -> first request answered through the VIP",
              ["new tasks", "p50 (ms)", "max (ms)", "min (ms)", "probes", "failed probes", "probe gap (ms)"],
              [[len(ms), f"{percentile(ms, 50):.1f}", f"{max(ms):.1f}", f"{min(ms):.1f}", probes, failures,
                f"{gap * 1000:.1f}"]])
        with contextlib.suppress(OSError):
            load = os.getloadavg()[0]
            print(f"load average (1 min) at the end: {load:.2f}")


if __name__ == "__main__":
    main()

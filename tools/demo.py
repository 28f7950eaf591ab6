"""`make demo` / `make demo-down`: a one-host Shoal cluster on the embedded store, with a real service.

up:   stops a previous demo, starts shoald (default data root and socket), `swarm init`, deploys a
      3-replica busybox web service, shows every replica answering HTTP with its own hostname,
      kills one replica's process and shows Shoal replace it, scales to 5, and leaves it all up.
down: removes the demo's services, leaves the swarm and stops shoald.

It drives the real `shoal` CLI, so what it prints is what a user sees.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
import urllib.request
from collections.abc import Callable
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
BIN = Path(sys.executable).parent
SHOAL = str(BIN / "shoal")
SHOALD = str(BIN / "shoald")
DATA_ROOT = Path(os.environ.get("SHOAL_DEMO_DATA_ROOT", "/var/lib/shoal"))
SOCKET = os.environ.get("SHOAL_DEMO_SOCKET", "/run/shoal/shoal.sock")
PIDFILE = Path("/run/shoal/demo.pid")
IMAGE_ARCHIVE = ROOT / "build/images/busybox.tar"
ENV = {**os.environ, "SHOAL_HOST": f"unix://{SOCKET}"}
WEB_CMD = 'echo "hello from $(hostname)" > /tmp/index.html && exec httpd -f -p 80 -h /tmp'


def say(text: str) -> None:
    print(f"\n\033[1m==> {text}\033[0m", flush=True)


def shoal(*args: str, check: bool = True, show: bool = True) -> str:
    if show:
        print("$ shoal " + " ".join(a if " " not in a else repr(a) for a in args), flush=True)
    proc = subprocess.run([SHOAL, *args], env=ENV, text=True, capture_output=True)
    if show:
        print(proc.stdout, end="", flush=True)
    if proc.returncode and check:
        sys.stderr.write(proc.stderr)
        raise SystemExit(f"demo: `shoal {' '.join(args)}` failed ({proc.returncode})")
    return proc.stdout


def wait_for(what: str, predicate: Callable[[], bool], timeout_s: float) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if predicate():
            return
        time.sleep(0.2)  # polling interval of a condition with a deadline
    raise SystemExit(f"demo: timed out after {timeout_s:.0f}s waiting for {what}")


def task_pids(service: str) -> list[int]:
    tasks = json.loads(shoal_api("/tasks", filters=json.dumps({"service": [service]})))
    return [t["Status"]["ContainerStatus"]["PID"] for t in tasks
            if t["Status"]["State"] == "running" and t["DesiredState"] == "running"]


def shoal_api(path: str, **params: str) -> str:
    query = [arg for k, v in params.items() for arg in ("--data-urlencode", f"{k}={v}")]
    out = subprocess.run(["curl", "-sfG", "--unix-socket", SOCKET, f"http://shoal{path}", *query],
                         capture_output=True, text=True)
    return out.stdout or "[]"


def address_of(pid: int) -> str:
    out = subprocess.run(["nsenter", "-t", str(pid), "-n", "ip", "-4", "-o", "addr", "show", "eth0"],
                         capture_output=True, text=True).stdout.split()
    return out[3].split("/")[0] if len(out) > 3 else ""


def fetch(addr: str) -> str:
    with urllib.request.urlopen(f"http://{addr}/", timeout=2) as resp:
        return resp.read().decode().strip()


def show_answers(service: str) -> None:
    for pid in task_pids(service):
        addr = address_of(pid)
        print(f"  GET http://{addr}/ -> {fetch(addr)}", flush=True)


def daemon_alive() -> bool:
    return subprocess.run(["curl", "-sf", "--unix-socket", SOCKET, "http://shoal/_ping"],
                          capture_output=True).returncode == 0


def down() -> None:
    if not daemon_alive():
        print("demo: no demo daemon running")
        _stop_pid()
        return
    for line in shoal("service", "ls", "-q", show=False, check=False).split():
        shoal("service", "rm", line, check=False)
    wait_for("containers to stop", lambda: not task_pids_all(), 60)
    shoal("swarm", "leave", "--force", check=False)
    _stop_pid()
    print("demo: stopped")


def task_pids_all() -> list[object]:
    return [t for t in json.loads(shoal_api("/tasks")) if t["Status"]["State"] == "running"]


def _stop_pid() -> None:
    if not PIDFILE.exists():
        return
    pid = int(PIDFILE.read_text())
    try:
        os.kill(pid, signal.SIGTERM)
        wait_for("shoald to exit", lambda: not Path(f"/proc/{pid}").exists(), 30)
    except ProcessLookupError:
        pass
    PIDFILE.unlink(missing_ok=True)


def start_daemon() -> None:
    DATA_ROOT.mkdir(parents=True, exist_ok=True)
    PIDFILE.parent.mkdir(parents=True, exist_ok=True)
    log = open(DATA_ROOT / "demo-shoald.out", "ab")  # noqa: SIM115 - handed to the daemon
    proc = subprocess.Popen(
        [SHOALD, "--data-root", str(DATA_ROOT), "--host", f"unix://{SOCKET}",
         "--load-image", str(IMAGE_ARCHIVE)],
        stdout=log, stderr=log, stdin=subprocess.DEVNULL, start_new_session=True)
    PIDFILE.write_text(str(proc.pid))
    wait_for("shoald to answer", daemon_alive, 30)
    print(f"shoald running (pid {proc.pid}, data root {DATA_ROOT}, socket {SOCKET})")


def up() -> None:
    started = time.monotonic()
    say("Replacing any previous demo")
    down()
    say("Starting shoald and making a one-node swarm (embedded SQLite store)")
    start_daemon()
    shoal("swarm", "init", "--advertise-addr", "127.0.0.1")
    say("Deploying a replicated web service: 3 busybox httpd replicas")
    shoal("service", "create", "--name", "web", "--replicas", "3", "--init", "--update-monitor", "1s",
          "--limit-memory", "64M", "busybox", "sh", "-c", WEB_CMD)
    shoal("service", "ls")
    shoal("service", "ps", "web")
    say("Every replica answers with its own hostname")
    wait_for("3 replicas", lambda: len(task_pids("web")) == 3, 60)
    show_answers("web")
    say("Self-healing: kill -9 one replica's process")
    victim = task_pids("web")[0]
    print(f"$ kill -9 {victim}")
    os.kill(victim, signal.SIGKILL)
    wait_for("a replacement", lambda: len(task_pids("web")) == 3 and victim not in task_pids("web"), 60)
    shoal("service", "ps", "web")
    show_answers("web")
    say("Scaling to 5")
    shoal("service", "scale", "web=5", "-d")
    wait_for("5 replicas", lambda: len(task_pids("web")) == 5, 60)
    shoal("service", "ls")
    show_answers("web")
    say(f"Done in {time.monotonic() - started:.1f}s. The cluster stays up: try "
        "`.venv/bin/shoal service ps web` or "
        "`DOCKER_HOST=unix:///run/shoal/shoal.sock docker service ls`; `make demo-down` stops it.")


if __name__ == "__main__":
    {"up": up, "down": down}[sys.argv[1] if len(sys.argv) > 1 else "up"]()

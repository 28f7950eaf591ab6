"""One lab host's shoald: starting it inside the host's namespaces, finding it, stopping it and
killing its containers.

shoald is started with `nsenter --net --uts` (never `ip netns exec`, which would give it a private
mount namespace), in a session of its own, with stdout and stderr appended to
`DATA_ROOT/shoald.out`. A PID from the state file is trusted only while that process's command
line still names the host's data root.
"""

from __future__ import annotations

import os
import shutil
import sys
from pathlib import Path

from shoal.hostnet import netns, procs
from shoal.hostnet.cmd import run
from shoal.lab import names
from shoal.lab.client import HostClient, wait_ping
from shoal.lab.state import HostState, LabState

START_TIMEOUT_S = 60.0
STOP_TIMEOUT_S = 20.0


def shoald_argv() -> list[str]:
    """The shoald of this Python environment (the venv's script), else `python -m`."""
    script = Path(sys.executable).parent / "shoald"
    if script.exists():
        return [str(script)]
    found = shutil.which("shoald")
    return [found] if found else [sys.executable, "-m", "shoal.daemon.main"]


def daemon_argv(state: LabState, host: HostState) -> list[str]:
    root = names.data_root(state.name, host.name)
    argv = [*shoald_argv(), "--data-root", str(root),
            "--host", f"unix://{names.socket_path(state.name, host.name)}",
            "--listen-addr", f"{host.address}:{names.CLUSTER_PORT}",
            "--bridge-cidr", names.bridge_cidr(host.index), "--label", f"shoal.lab={state.name}"]
    for image in state.images:
        argv += ["--load-image", image]
    return netns.nsenter_argv(argv, netns=names.host_netns(state.name, host.name),
                              uts_file=names.uts_file(state.name, host.name))


def spawn(state: LabState, host: HostState) -> int:
    """Start the host's shoald detached; returns its PID (nsenter execs shoald in place)."""
    root = names.data_root(state.name, host.name)
    root.mkdir(parents=True, exist_ok=True)
    out = str(root / "shoald.out")
    actions = [(os.POSIX_SPAWN_OPEN, 0, "/dev/null", os.O_RDONLY, 0),
               (os.POSIX_SPAWN_OPEN, 1, out, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o644),
               (os.POSIX_SPAWN_DUP2, 1, 2)]
    argv = daemon_argv(state, host)
    return os.posix_spawnp(argv[0], argv, dict(os.environ), file_actions=actions, setsid=True)


def daemon_pids(lab: str, host: HostState) -> list[int]:
    """PIDs of shoald processes of this host: the recorded one if still ours, plus any other
    process whose command line passes the host's data root as --data-root."""
    root = str(names.data_root(lab, host.name))
    found = set(procs.pids_with_option("--data-root", root))
    recorded = procs.option_value(procs.cmdline(host.pid), "--data-root") if host.pid else None
    if recorded == root and procs.alive(host.pid):
        found.add(host.pid)
    return sorted(found)


def is_running(lab: str, host: HostState) -> bool:
    return bool(daemon_pids(lab, host))


def start(state: LabState, host: HostState, timeout: float = START_TIMEOUT_S) -> None:
    """Spawn the host's shoald and wait until it answers /_ping (host.pid is set)."""
    host.pid = spawn(state, host)
    start_wait(state, host, timeout)


def start_wait(state: LabState, host: HostState, timeout: float = START_TIMEOUT_S) -> None:
    """Wait until the spawned shoald (host.pid) answers /_ping; LabError if it dies first."""
    pid = host.pid

    def alive() -> bool:
        procs.reap(pid)
        return procs.alive(pid)

    with HostClient(host.name, names.socket_path(state.name, host.name)) as client:
        try:
            wait_ping(client, timeout, alive)
        except names.LabError as e:
            out = names.data_root(state.name, host.name) / "shoald.out"
            raise names.LabError(f"{e}; see {out}") from None


def stop(lab: str, host: HostState, *, kill: bool = False) -> None:
    """The host dies: its shoald (SIGTERM, or SIGKILL with `kill`) and then all its containers."""
    for pid in daemon_pids(lab, host):
        procs.stop(pid, kill=kill, timeout=STOP_TIMEOUT_S)
    host.pid = 0
    kill_containers(names.instance_tag(names.data_root(lab, host.name)))


def kill_containers(tag: str) -> None:
    """SIGKILL and delete every container of shoald instance `tag` (crun state /run/shoal/crun-I)."""
    root = f"/run/shoal/crun-{tag}"
    # A shoald killed mid-call leaves its crun child running, which could recreate the state
    # directory after it is removed: those go first (this instance's, by their private --root).
    for pid in procs.pids_with_option("--root", root):
        procs.stop(pid, kill=True, timeout=5.0)
    if not Path(root).is_dir() or shutil.which("crun") is None:
        return
    for cid in run(["crun", "--root", root, "list", "-q"], check=False).split():
        run(["crun", "--root", root, "kill", cid, "KILL"], check=False)
        run(["crun", "--root", root, "delete", "--force", cid], check=False)

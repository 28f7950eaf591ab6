"""`shoal lab down`: remove everything of a lab, whether whole, half-made or left by a crash.

Nothing here needs the state file: hosts are found by name in every place a lab leaves them
(state, data roots, namespaces, socket and UTS files), and daemons by PID (when the recorded
process still names its data root) or by a command line naming the lab's data directory. Each
host's shoald objects are derived from its instance tag (docs/architecture.md).
"""

from __future__ import annotations

import contextlib
import re
import shutil
from pathlib import Path

from shoal.hostnet import mounts, netns, procs, uts
from shoal.lab import host as lab_host
from shoal.lab import names
from shoal.lab import state as lab_state
from shoal.lab.state import HostState

_HOST_FILE = re.compile(r"^(node[1-9][0-9]*)\.(sock|uts)$")
CGROUP_ROOT = Path("/sys/fs/cgroup")


def find_hosts(lab: str) -> list[str]:
    """Every host name of `lab` that anything on the machine still mentions."""
    found: set[str] = set()
    st = lab_state.load(lab)
    if st is not None:
        found.update(h.name for h in st.hosts)
    if names.data_dir(lab).is_dir():
        found.update(p.name for p in names.data_dir(lab).iterdir() if p.name.startswith("node"))
    if names.run_dir(lab).is_dir():
        found.update(m.group(1) for p in names.run_dir(lab).iterdir() if (m := _HOST_FILE.match(p.name)))
    prefix = names.netns_prefix(lab)
    found.update(n[len(prefix):] for n in netns.list_names(prefix + "node"))
    return sorted(h for h in found if _valid_host(h))


def _valid_host(host: str) -> bool:
    try:
        names.host_index(host)
    except names.LabError:
        return False
    return True


def stop_daemons(lab: str, hosts: list[str]) -> None:
    """SIGKILL every shoald of the lab: recorded PIDs and any process naming the lab's data dir."""
    st = lab_state.load(lab)
    recorded = {h.name: h for h in st.hosts} if st is not None else {}
    pids: set[int] = set(procs.pids_with_option("--data-root", f"{names.data_dir(lab)}/", prefix=True))
    for name in hosts:
        host = recorded.get(name, HostState(name, names.host_index(name), ""))
        pids.update(lab_host.daemon_pids(lab, host))
    for pid in sorted(pids):
        procs.stop(pid, kill=True)


def remove_host_objects(lab: str, host: str) -> None:
    """Containers, mounts, task netns, cgroups and crun state of the host's shoald."""
    root = names.data_root(lab, host)
    tag = names.instance_tag(root)
    lab_host.kill_containers(tag)
    mounts.unmount_under(root)
    for ns in netns.list_names(f"shoal-{tag}-"):
        netns.delete(ns)
    for cgroup in CGROUP_ROOT.glob(f"*/shoal-{tag}"):
        _rmdir_tree(cgroup)
    shutil.rmtree(f"/run/shoal/crun-{tag}", ignore_errors=True)
    netns.delete(names.host_netns(lab, host))
    uts.remove(names.uts_file(lab, host))


def _rmdir_tree(directory: Path) -> None:
    """rmdir a cgroup and its children bottom-up (cgroup files cannot be unlinked)."""
    if not directory.is_dir():
        return
    for child in directory.iterdir():
        if child.is_dir():
            _rmdir_tree(child)
    with contextlib.suppress(OSError):
        directory.rmdir()


def down(lab: str) -> bool:
    """Remove the lab; False when nothing of it existed."""
    names.check_name(lab)
    hosts = find_hosts(lab)
    anything = bool(hosts) or names.run_dir(lab).exists() or names.data_dir(lab).exists() \
        or bool(netns.list_names(names.netns_prefix(lab)))
    stop_daemons(lab, hosts)
    for host in hosts:
        remove_host_objects(lab, host)
    for ns in netns.list_names(names.netns_prefix(lab)):
        netns.delete(ns)
    for directory in (names.run_dir(lab), names.data_dir(lab)):
        mounts.unmount_under(directory)
        shutil.rmtree(directory, ignore_errors=True)
    return anything


def all_labs() -> list[str]:
    """Every lab with anything left: directories or namespaces named shoal-lab-LAB-*."""
    found = set(names.labs_on_disk())
    for ns in netns.list_names("shoal-lab-"):
        lab = ns[len("shoal-lab-"):].partition("-")[0]
        if names.valid_name(lab):
            found.add(lab)
    return sorted(found)

"""Host names and paths of one shoald instance (docs/architecture.md, "Names and paths on a host").

Used by the crun executor, the network code and the log collector, so that every name derived
from the data root and a task id is computed in one place.
"""

from __future__ import annotations

import hashlib
import os
from pathlib import Path

CGROUP_ROOT = Path("/sys/fs/cgroup")
NETNS_DIR = Path("/run/netns")


def instance_tag(data_root: Path) -> str:
    """First 8 hex digits of sha256(realpath(D)): two daemons on one machine never collide."""
    return hashlib.sha256(os.path.realpath(data_root).encode()).hexdigest()[:8]


class HostPaths:
    """Every host name and path of one instance; pure computation, touches nothing."""

    def __init__(self, data_root: Path) -> None:
        self.data_root = Path(os.path.realpath(data_root))
        self.tag = instance_tag(self.data_root)
        self.containers = self.data_root / "containers"
        self.network_dir = self.data_root / "network"
        self.crun_root = Path(f"/run/shoal/crun-{self.tag}")
        self.bridge = f"shb-{self.tag}"
        self.cgroup_parent = f"/shoal-{self.tag}"

    def container_dir(self, task_id: str) -> Path:
        return self.containers / task_id

    def cgroup_path(self, task_id: str) -> str:
        return f"{self.cgroup_parent}/{task_id}"

    def netns(self, task_id: str) -> str:
        return f"shoal-{self.tag}-{task_id[:12]}"

    def netns_path(self, task_id: str) -> Path:
        return NETNS_DIR / self.netns(task_id)

    def veth(self, task_id: str) -> str:
        # 15 characters: the kernel's limit for interface names (IFNAMSIZ - 1).
        return "shv" + hashlib.sha1((self.tag + task_id).encode()).hexdigest()[:12]


def v1_hierarchies() -> list[Path]:
    """Mount points of the cgroup v1 hierarchies under /sys/fs/cgroup (one per controller set)."""
    found: list[Path] = []
    with open("/proc/self/mounts", encoding="utf-8") as f:
        for line in f:
            parts = line.split()
            if len(parts) >= 3 and parts[2] == "cgroup" and parts[1].startswith(str(CGROUP_ROOT)):
                found.append(Path(parts[1]))
    return found

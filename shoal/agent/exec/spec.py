"""The OCI runtime spec (config.json) of a task's container, built like Docker builds it.

Called by `CrunExecutor.prepare` (agent/exec/crun.py). Pure functions except `resolve_user`,
which reads /etc/passwd and /etc/group of the container's rootfs.
"""

from __future__ import annotations

import os
import signal
from pathlib import Path
from typing import Any

from shoal.agent.exec.protocol import ExecError
from shoal.agent.images.model import ImageConfig
from shoal.api.types import ContainerSpec, Resources

INIT_PATH = "/sbin/docker-init"  # where Docker puts its init too; /dev is a tmpfs mounted later
DEFAULT_PATH = "PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"
CPU_PERIOD_US = 100_000
DEFAULT_CAPS = [
    "CAP_CHOWN", "CAP_DAC_OVERRIDE", "CAP_FSETID", "CAP_FOWNER", "CAP_MKNOD", "CAP_NET_RAW",
    "CAP_SETGID", "CAP_SETUID", "CAP_SETFCAP", "CAP_SETPCAP", "CAP_NET_BIND_SERVICE",
    "CAP_SYS_CHROOT", "CAP_KILL", "CAP_AUDIT_WRITE",
]
MASKED_PATHS = [
    "/proc/asound", "/proc/acpi", "/proc/kcore", "/proc/keys", "/proc/latency_stats",
    "/proc/timer_list", "/proc/timer_stats", "/proc/sched_debug", "/proc/scsi", "/sys/firmware",
    "/sys/devices/virtual/powercap",
]
READONLY_PATHS = ["/proc/bus", "/proc/fs", "/proc/irq", "/proc/sys", "/proc/sysrq-trigger"]
_NOSUID = ["nosuid", "noexec", "nodev"]
DEFAULT_MOUNTS: list[dict[str, Any]] = [
    {"destination": "/proc", "type": "proc", "source": "proc", "options": _NOSUID},
    {"destination": "/dev", "type": "tmpfs", "source": "tmpfs",
     "options": ["nosuid", "strictatime", "mode=755", "size=65536k"]},
    {"destination": "/dev/pts", "type": "devpts", "source": "devpts",
     "options": ["nosuid", "noexec", "newinstance", "ptmxmode=0666", "mode=0620", "gid=5"]},
    {"destination": "/sys", "type": "sysfs", "source": "sysfs", "options": [*_NOSUID, "ro"]},
    {"destination": "/sys/fs/cgroup", "type": "cgroup", "source": "cgroup",
     "options": [*_NOSUID, "relatime", "ro"]},
    {"destination": "/dev/mqueue", "type": "mqueue", "source": "mqueue", "options": _NOSUID},
    {"destination": "/dev/shm", "type": "tmpfs", "source": "shm",
     "options": [*_NOSUID, "mode=1777", "size=65536k"]},
]


def process_args(cs: ContainerSpec, image: ImageConfig) -> list[str]:
    """Docker's rule: Command replaces Entrypoint, Args replaces Cmd, and a Command without
    Args drops the image's Cmd (it belonged to the image's Entrypoint). As swarmkit, an empty list
    counts as unset (`Args: []` runs the image's Cmd)."""
    entrypoint = cs.command if cs.command else (image.entrypoint or [])
    if cs.args:
        cmd = cs.args
    elif cs.command:
        cmd = []
    else:
        cmd = image.cmd or []
    args = [*entrypoint, *cmd]
    if not args:
        raise ExecError("no command specified")
    return args


def process_env(cs: ContainerSpec, image: ImageConfig, hostname: str) -> list[str]:
    """HOSTNAME, then the image's env, then the spec's (later keys win), PATH if none set one."""
    merged: dict[str, str] = {"HOSTNAME": hostname}
    for item in [*(image.env or []), *(cs.env or [])]:
        key, _, value = item.partition("=")
        merged[key] = value
    merged.setdefault("PATH", DEFAULT_PATH.partition("=")[2])
    return [f"{k}={v}" for k, v in merged.items()]


def container_hostname(cs: ContainerSpec, task_name: str, task_id: str) -> str:
    return (cs.hostname or task_name or task_id)[:63]


def read_in_root(rootfs: Path, rel: str) -> str:
    """Read `rel` inside `rootfs` resolving symlinks as a chroot would: an absolute target is
    rebased onto the rootfs and `..` stops at its root, so an image's links never reach host files.
    Raises FileNotFoundError if it cannot be found inside the rootfs."""
    parts = [p for p in rel.split("/") if p]
    current: list[str] = []
    hops = 0
    while parts:
        part = parts.pop(0)
        if part == ".":
            continue
        if part == "..":
            current = current[:-1]
            continue
        candidate = rootfs.joinpath(*current, part)
        if candidate.is_symlink():
            hops += 1
            if hops > 40:
                raise FileNotFoundError(rel)
            target = os.readlink(candidate)
            if target.startswith("/"):
                current = []
            parts = [p for p in target.split("/") if p] + parts
            continue
        current.append(part)
    path = rootfs.joinpath(*current)
    if not path.is_file():
        raise FileNotFoundError(rel)
    return path.read_text(errors="replace")


def _lookup(path: Path, name: str) -> list[str] | None:
    try:
        text = read_in_root(path.parent.parent, "etc/" + path.name)
    except (FileNotFoundError, NotADirectoryError):
        return None
    for line in text.splitlines():
        fields = line.split(":")
        if len(fields) >= 3 and fields[0] == name:
            return fields
    return None


def _gid(rootfs: Path, group: str) -> int:
    if group.isdigit():
        return int(group)
    fields = _lookup(rootfs / "etc/group", group)
    if fields is None:
        raise ExecError(f"unable to find group {group}: no matching entries in group file")
    return int(fields[2])


def resolve_user(user: str, groups: list[str] | None, rootfs: Path) -> dict[str, Any]:
    """OCI process.user for Docker's `user[:group]` (names looked up in the rootfs)."""
    name, _, group = (user or "0").partition(":")
    if name.isdigit():
        uid, gid = int(name), 0
        fields = _lookup_uid(rootfs, uid)
        if fields is not None:
            gid = int(fields[3])
    else:
        pw = _lookup(rootfs / "etc/passwd", name)
        if pw is None or len(pw) < 4:
            raise ExecError(f"unable to find user {name}: no matching entries in passwd file")
        uid, gid = int(pw[2]), int(pw[3])
    if group:
        gid = _gid(rootfs, group)
    out: dict[str, Any] = {"uid": uid, "gid": gid}
    if groups:
        out["additionalGids"] = [_gid(rootfs, g) for g in groups]
    return out


def _lookup_uid(rootfs: Path, uid: int) -> list[str] | None:
    try:
        lines = read_in_root(rootfs, "etc/passwd").splitlines()
    except (FileNotFoundError, NotADirectoryError):
        return None
    for line in lines:
        fields = line.split(":")
        if len(fields) >= 4 and fields[2] == str(uid) and fields[3].isdigit():
            return fields
    return None


def capabilities(cs: ContainerSpec) -> list[str]:
    def norm(c: str) -> str:
        c = c.upper()
        return c if c.startswith("CAP_") else "CAP_" + c

    drop = {norm(c) for c in cs.capability_drop or []}
    caps = [] if "CAP_ALL" in drop else [c for c in DEFAULT_CAPS if c not in drop]
    caps += [norm(c) for c in cs.capability_add or [] if norm(c) not in caps]
    return caps


def linux_resources(resources: Resources | None) -> dict[str, Any]:
    out: dict[str, Any] = {"devices": [{"allow": False, "access": "rwm"}]}
    limits = resources.limits if resources else None
    if limits is None:
        return out
    if limits.memory_bytes:
        out["memory"] = {"limit": limits.memory_bytes}
    if limits.nano_cpus:
        quota = max(1000, limits.nano_cpus * CPU_PERIOD_US // 1_000_000_000)  # kernel minimum 1 ms
        out["cpu"] = {"quota": quota, "period": CPU_PERIOD_US}
    if limits.pids:
        out["pids"] = {"limit": limits.pids}
    return out


def parse_signal(name: str, default: signal.Signals = signal.SIGTERM) -> int:
    """Docker's StopSignal ("SIGTERM", "TERM", "15") as a number."""
    if not name:
        return int(default)
    if name.isdigit():
        return int(name)
    upper = name.upper()
    try:
        return int(signal.Signals[upper if upper.startswith("SIG") else "SIG" + upper])
    except KeyError:
        raise ExecError(f"invalid stop signal: {name}") from None


def bind(source: Path | str, dest: str, readonly: bool = False) -> dict[str, Any]:
    opts = ["rbind", "rprivate"] + (["ro"] if readonly else [])
    return {"destination": dest, "type": "bind", "source": str(source), "options": opts}

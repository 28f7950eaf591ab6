"""A task's OCI bundle on disk: overlay rootfs, /etc files and config.json under D/containers/<id>/.

Called by `CrunExecutor.prepare/remove` (agent/exec/crun.py). Mounting uses mount(2) through
ctypes: one syscall instead of a `mount` process per task.
"""

from __future__ import annotations

import ctypes
import os
import shutil
from pathlib import Path
from typing import Any

import msgspec

from shoal.agent.exec import spec as oci
from shoal.agent.exec.protocol import ExecError
from shoal.agent.images.model import ResolvedImage
from shoal.agent.netstate import LocalAttachment
from shoal.agent.network.dns import resolv_conf
from shoal.api.types import ContainerSpec, Task

MNT_DETACH = 2
TINI = Path("/usr/bin/tini-static")
# Files of a bundle that `remove` deletes; logs (stdout.raw, stderr.raw, log.jsonl*) stay.
BUNDLE_FILES = ("config.json", "hosts", "hostname", "resolv.conf", "pid", "crun.log", "networks.json")
BUNDLE_DIRS = ("rootfs", "upper", "work")
_libc = ctypes.CDLL(None, use_errno=True)


def mount_overlay(layers: list[Path], cdir: Path) -> Path:
    """Mount the image layers (lowest first) plus a per-container upper dir at cdir/rootfs."""
    merged, upper, work = cdir / "rootfs", cdir / "upper", cdir / "work"
    for d in (merged, upper, work):
        d.mkdir(parents=True, exist_ok=True)
    if os.path.ismount(merged):
        return merged  # prepare is idempotent
    if not layers:
        raise ExecError("image has no layers")
    # overlayfs lists the topmost lower layer first.
    lower = ":".join(str(p) for p in reversed(layers))
    opts = f"lowerdir={lower},upperdir={upper},workdir={work}".encode()
    if _libc.mount(b"overlay", str(merged).encode(), b"overlay", 0, opts) != 0:
        err = ctypes.get_errno()
        raise ExecError(f"mount overlay on {merged}: {os.strerror(err)}")
    return merged


def unmount(path: Path) -> None:
    """Unmount `path` if it is a mount point; a busy one is detached lazily."""
    if not os.path.ismount(path):
        return
    if _libc.umount2(str(path).encode(), 0) == 0:
        return
    if _libc.umount2(str(path).encode(), MNT_DETACH) != 0:
        err = ctypes.get_errno()
        raise ExecError(f"umount {path}: {os.strerror(err)}")


def remove_bundle(cdir: Path) -> None:
    """Delete the bundle but keep the logs. Refuses while rootfs is still mounted, so that a
    failed unmount can never make rmtree walk into the container's filesystem."""
    if os.path.ismount(cdir / "rootfs"):
        raise ExecError(f"{cdir / 'rootfs'} is still mounted")
    for name in BUNDLE_FILES:
        (cdir / name).unlink(missing_ok=True)
    for name in BUNDLE_DIRS:
        shutil.rmtree(cdir / name, ignore_errors=True)


def _resolv_conf(cs: ContainerSpec, embedded_dns: bool = False) -> str:
    dns = cs.dns_config if isinstance(cs.dns_config, dict) else {}
    servers = dns.get("Nameservers") or []
    if embedded_dns and not servers:  # a task on overlays: the embedded resolver (127.0.0.11)
        return resolv_conf(dns.get("Search") or (), dns.get("Options") or ("ndots:0",))
    if servers:
        lines = [f"nameserver {s}" for s in servers]
        if dns.get("Search"):
            lines.append("search " + " ".join(dns["Search"]))
        if dns.get("Options"):
            lines.append("options " + " ".join(dns["Options"]))
        return "\n".join(lines) + "\n"
    try:
        host = Path("/etc/resolv.conf").read_text()
    except OSError:
        return ""
    # Loopback resolvers of the host are unreachable from the container's namespace (Docker
    # filters them as well).
    kept = [ln for ln in host.splitlines()
            if not (ln.startswith("nameserver") and ln.split()[1:2] and ln.split()[1].startswith("127."))]
    return "\n".join(kept) + "\n"


def write_etc_files(cdir: Path, cs: ContainerSpec, hostname: str, address: str, *,
                    embedded_dns: bool = False) -> None:
    hosts = ["127.0.0.1\tlocalhost", "::1\tlocalhost ip6-localhost ip6-loopback"]
    if address:
        hosts.append(f"{address}\t{hostname}")
    hosts += [" ".join(h.split()) for h in cs.hosts or []]
    (cdir / "hosts").write_text("\n".join(hosts) + "\n")
    (cdir / "hostname").write_text(hostname + "\n")
    (cdir / "resolv.conf").write_text(_resolv_conf(cs, embedded_dns))


def write_attachments(cdir: Path, attachments: list[LocalAttachment]) -> None:
    """Record the task's overlay attachments, for `remove` and adoption after a restart."""
    if attachments:
        (cdir / "networks.json").write_bytes(msgspec.json.encode(attachments))
    else:
        (cdir / "networks.json").unlink(missing_ok=True)


def read_attachments(cdir: Path) -> list[LocalAttachment]:
    try:
        return msgspec.json.decode((cdir / "networks.json").read_bytes(), type=list[LocalAttachment])
    except (FileNotFoundError, msgspec.DecodeError):
        return []


def _mounts(cdir: Path, init: bool) -> list[dict[str, Any]]:
    mounts = [*oci.DEFAULT_MOUNTS,
              oci.bind(cdir / "hosts", "/etc/hosts"),
              oci.bind(cdir / "hostname", "/etc/hostname"),
              oci.bind(cdir / "resolv.conf", "/etc/resolv.conf")]
    if init:
        mounts.append(oci.bind(TINI, oci.INIT_PATH, readonly=True))
    return mounts


def build_config(task: Task, image: ResolvedImage, cdir: Path, *, netns: Path,
                 cgroups_path: str) -> dict[str, Any]:
    """config.json for the task; the rootfs must be mounted (users are looked up in it)."""
    cs = task.spec.container_spec or ContainerSpec()
    hostname = oci.container_hostname(cs, task.name, task.id)
    args = oci.process_args(cs, image.config)
    if cs.init:
        args = [oci.INIT_PATH, "--", *args]
    caps = oci.capabilities(cs)
    process = {
        "terminal": False,
        "user": oci.resolve_user(cs.user or image.config.user, cs.groups, cdir / "rootfs"),
        "args": args,
        "env": oci.process_env(cs, image.config, hostname),
        "cwd": cs.dir or image.config.working_dir or "/",
        "capabilities": {"bounding": caps, "effective": caps, "permitted": caps},
        "noNewPrivileges": False,
    }
    namespaces = [{"type": "pid"}, {"type": "ipc"}, {"type": "uts"}, {"type": "mount"},
                  {"type": "network", "path": str(netns)}]
    linux: dict[str, Any] = {
        "namespaces": namespaces, "cgroupsPath": cgroups_path,
        "resources": oci.linux_resources(task.spec.resources),
        "maskedPaths": oci.MASKED_PATHS, "readonlyPaths": oci.READONLY_PATHS,
    }
    if cs.sysctls:
        linux["sysctl"] = dict(cs.sysctls)
    return {
        "ociVersion": "1.0.2", "process": process, "hostname": hostname,
        "root": {"path": str(cdir / "rootfs"), "readonly": cs.read_only},
        "mounts": _mounts(cdir, bool(cs.init)), "linux": linux,
        "annotations": {"io.shoal.task.id": task.id, "io.shoal.image": image.image_id},
    }


def write_config(cdir: Path, config: dict[str, Any]) -> None:
    tmp = cdir / "config.json.tmp"
    tmp.write_bytes(msgspec.json.encode(config))
    os.replace(tmp, cdir / "config.json")

"""Named network namespaces (`ip netns`, files under /run/netns) and running commands inside them.

`nsenter_argv` enters only the network (and optionally UTS) namespace and so, unlike
`ip netns exec`, keeps the caller's mount namespace: mounts a daemon makes stay visible to the
root namespace and to its own restart.
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Sequence
from pathlib import Path

from shoal.hostnet.cmd import ip

NETNS_DIR = Path("/run/netns")


def netns_path(name: str) -> Path:
    return NETNS_DIR / name


def exists(name: str) -> bool:
    return netns_path(name).exists()


def list_names(prefix: str = "") -> list[str]:
    """Names of the named network namespaces that start with `prefix`."""
    try:
        names = os.listdir(NETNS_DIR)
    except FileNotFoundError:
        return []
    return sorted(n for n in names if n.startswith(prefix))


def add(name: str) -> None:
    """Create `name` (with its loopback up); a leftover of the same name is replaced."""
    delete(name)
    ip("netns", "add", name)
    ip("link", "set", "lo", "up", netns=name)


def delete(name: str) -> None:
    """Delete `name` if it exists (its links go when the last process in it is gone)."""
    if exists(name):
        ip("netns", "delete", name, check=False)
    if exists(name):  # `ip netns delete` refused (e.g. an unmounted leftover file): remove the file
        with contextlib.suppress(OSError):
            netns_path(name).unlink()


def nsenter_argv(argv: Sequence[str], *, netns: str, uts_file: Path | None = None) -> list[str]:
    """An argv that runs `argv` in network namespace `netns` (and UTS namespace `uts_file`).

    nsenter without --pid execs the command directly, so the PID of the started process is the
    command's own PID.
    """
    ns = [f"--net={netns_path(netns)}"]
    if uts_file is not None:
        ns.append(f"--uts={uts_file}")
    return ["nsenter", *ns, "--", *argv]

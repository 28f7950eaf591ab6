"""Persistent UTS namespaces (a hostname per lab host) held by a bind-mounted file.

`unshare --uts=FILE hostname NAME` creates the namespace, sets its hostname and bind-mounts it on
FILE, so it outlives the `unshare` process; `nsenter --uts=FILE` enters it later.
"""

from __future__ import annotations

import contextlib
from pathlib import Path

from shoal.hostnet.cmd import run
from shoal.hostnet.mounts import is_mountpoint


def create(path: Path, hostname: str) -> None:
    """A new UTS namespace with `hostname`, kept alive by a bind mount on `path`; idempotent."""
    remove(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.touch()
    run(["unshare", f"--uts={path}", "hostname", hostname])


def hostname(path: Path) -> str:
    """The hostname inside the UTS namespace held by `path`."""
    return run(["nsenter", f"--uts={path}", "hostname"]).strip()


def remove(path: Path) -> None:
    """Unmount the namespace file (the namespace dies with its last user) and delete it."""
    while is_mountpoint(path):
        run(["umount", "-l", str(path)], check=False)
        if is_mountpoint(path):
            break
    with contextlib.suppress(FileNotFoundError, IsADirectoryError):
        path.unlink()

"""The root mount namespace's mount table: finding and unmounting what lies under a directory."""

from __future__ import annotations

import os
from pathlib import Path

from shoal.hostnet.cmd import run


def _decode(field: str) -> str:
    """/proc/self/mounts escapes space, tab, newline and backslash as octal."""
    return (field.replace("\\040", " ").replace("\\011", "\t").replace("\\012", "\n")
            .replace("\\134", "\\"))


def mount_points() -> list[str]:
    with open("/proc/self/mounts", encoding="utf-8") as f:
        return [_decode(line.split()[1]) for line in f if len(line.split()) > 1]


def mounts_under(directory: Path) -> list[str]:
    """Mount points at or below `directory`, in mount order (unmount them in reverse)."""
    root = os.path.realpath(directory)
    return [p for p in mount_points() if p == root or p.startswith(root + "/")]


def is_mountpoint(path: Path) -> bool:
    real = os.path.realpath(path)
    return real in mount_points()


def unmount_under(directory: Path) -> None:
    """Lazily unmount everything at or below `directory`, deepest and newest first."""
    for point in reversed(mounts_under(directory)):
        run(["umount", "-l", point], check=False)

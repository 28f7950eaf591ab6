"""Host preparation for the crun executor: the hybrid-cgroup fix, the child subreaper, cgroup dirs.

Called by `CrunExecutor.setup/remove/teardown` (agent/exec/crun.py). See docs/architecture.md,
"Host quirks": the fix is host-wide and is never undone.
"""

from __future__ import annotations

import contextlib
import ctypes
import os
import subprocess
from pathlib import Path

from shoal.agent.exec.paths import CGROUP_ROOT, v1_hierarchies

PR_SET_CHILD_SUBREAPER = 36
UNIFIED_CONTROLLERS = CGROUP_ROOT / "unified" / "cgroup.controllers"


def fix_hybrid_cgroups() -> list[str]:
    """Mount each controller left on the v2 mount as a v1 hierarchy; returns those mounted.

    crun refuses to run while /sys/fs/cgroup/unified still holds a controller (here hugetlb);
    once mounted as v1 the controller leaves the v2 list, so a second call finds nothing to do.
    """
    try:
        leftovers = UNIFIED_CONTROLLERS.read_text().split()
    except FileNotFoundError:
        return []  # pure v1 or pure v2 host: nothing hybrid to fix
    mounted = {p.name for p in v1_hierarchies()}
    done: list[str] = []
    for name in leftovers:
        if name in mounted:
            continue
        target = CGROUP_ROOT / name
        target.mkdir(exist_ok=True)
        proc = subprocess.run(["mount", "-t", "cgroup", "-o", name, "cgroup", str(target)],
                              capture_output=True, text=True, check=False)
        if proc.returncode != 0:
            raise OSError(f"cannot mount cgroup controller {name} as v1: {proc.stderr.strip()}")
        done.append(name)
    return done


def become_subreaper() -> None:
    """Orphaned container inits get re-parented to us, so waitpid() can collect exit codes."""
    libc = ctypes.CDLL(None, use_errno=True)
    if libc.prctl(PR_SET_CHILD_SUBREAPER, 1, 0, 0, 0) != 0:
        err = ctypes.get_errno()
        raise OSError(err, f"prctl(PR_SET_CHILD_SUBREAPER): {os.strerror(err)}")


def remove_cgroup(path: str) -> None:
    """rmdir `path` (absolute cgroupfs path) in every v1 hierarchy, children first; idempotent."""
    for hierarchy in v1_hierarchies():
        _rmdir_tree(hierarchy / path.lstrip("/"))


def _rmdir_tree(directory: Path) -> None:
    # Cgroup directories cannot be removed with rmtree (their files are not deletable): rmdir
    # each sub-cgroup bottom-up. An rmdir of a cgroup that still has tasks fails with EBUSY.
    if not directory.is_dir():
        return
    for child in directory.iterdir():
        if child.is_dir():
            _rmdir_tree(child)
    with contextlib.suppress(FileNotFoundError):
        directory.rmdir()


def cgroup_dirs(path: str) -> list[Path]:
    """The directories of cgroup `path` that exist (for tests and leak checks)."""
    return [h / path.lstrip("/") for h in v1_hierarchies() if (h / path.lstrip("/")).is_dir()]

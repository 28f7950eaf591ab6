"""User lookups read the container's /etc files without ever following a link out of its rootfs."""

from __future__ import annotations

from pathlib import Path

import pytest

from shoal.agent.exec.spec import read_in_root, resolve_user


def make_root(tmp_path: Path) -> Path:
    root = tmp_path / "rootfs"
    (root / "etc").mkdir(parents=True)
    return root


def test_absolute_symlink_is_rebased_onto_the_rootfs(tmp_path: Path) -> None:
    root = make_root(tmp_path)
    (root / "real").mkdir()
    (root / "real" / "passwd").write_text("app:x:1000:1000::/home/app:/bin/sh\n")
    (root / "etc" / "passwd").symlink_to("/real/passwd")
    assert resolve_user("app", None, root)["uid"] == 1000


@pytest.mark.parametrize("target", ["/etc/shadow", "../../../../etc/hostname", "/proc/self/environ"])
def test_links_never_reach_host_files(tmp_path: Path, target: str) -> None:
    root = make_root(tmp_path)
    (root / "etc" / "passwd").symlink_to(target)
    with pytest.raises(FileNotFoundError):
        read_in_root(root, "etc/passwd")

"""Malicious and broken archives: the image store refuses each with a message naming the problem
and leaves itself exactly as it was (no layer, blob, image, tag or staging leftovers).

Every layer case is tried both through `load` (inside a docker-save archive, after a good layer,
so a half-done load would show) and through `import_rootfs`.
"""

from __future__ import annotations

import asyncio
import copy as copy_module
import hashlib
import io
import json
import os
import stat
import tarfile
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from shoal.agent.images.store import ImageStore
from shoal.api.errors import InvalidArgument

pytestmark = pytest.mark.skipif(os.geteuid() != 0, reason="unpacking keeps numeric owners: needs root")

Entry = tuple[tarfile.TarInfo, bytes]
REG, DIR, SYM, LNK = tarfile.REGTYPE, tarfile.DIRTYPE, tarfile.SYMTYPE, tarfile.LNKTYPE


def entry(name: str, data: bytes = b"", *, kind: bytes = REG, link: str = "") -> Entry:
    info = tarfile.TarInfo(name)
    info.type, info.linkname, info.mode = kind, link, 0o755
    info.size = len(data) if kind == REG else 0
    return info, data


def tar_of(*entries: Entry) -> bytes:
    out = io.BytesIO()
    with tarfile.open(fileobj=out, mode="w", format=tarfile.PAX_FORMAT) as tar:
        for info, data in entries:
            tar.addfile(info, io.BytesIO(data) if info.isreg() else None)
    return out.getvalue()


def sha(data: bytes) -> str:
    return "sha256:" + hashlib.sha256(data).hexdigest()


def docker_save(layers: list[bytes], *, diff_ids: list[str] | None = None, config_name: str = "") -> bytes:
    ids = diff_ids if diff_ids is not None else [sha(x) for x in layers]
    config = json.dumps({"os": "linux", "rootfs": {"type": "layers", "diff_ids": ids}}).encode()
    name = config_name or f"{sha(config)[7:]}.json"
    paths = [f"{i}/layer.tar" for i in range(len(layers))]
    manifest = [{"Config": name, "RepoTags": ["evil:1"], "Layers": paths}]
    files = [entry(name, config), entry("manifest.json", json.dumps(manifest).encode())]
    files += [entry(f"{i}/layer.tar", layer) for i, layer in enumerate(layers)]
    return tar_of(*files)


GOOD_LAYER = tar_of(entry("ok/", kind=DIR), entry("ok/file", b"fine"))

# (case id, layer members, text the refusal must contain). "VICTIM" stands for the absolute path of
# a directory beside the store (see `victim`): a regression then damages that, never the host's /etc.
MALICIOUS_LAYERS: list[tuple[str, list[Entry], str]] = [
    ("absolute path", [entry("VICTIM/evil", b"x")], "VICTIM/evil'"),
    ("dotdot escape", [entry("../evil", b"x")], "'../evil'"),
    ("nested dotdot escape", [entry("a/", kind=DIR), entry("a/../../evil", b"x")], "'a/../../evil'"),
    ("write through absolute symlink", [entry("etc", kind=SYM, link="VICTIM"), entry("etc/passwd", b"x")],
     "through a symlink"),
    ("write through relative symlink", [entry("up", kind=SYM, link="."), entry("up/f", b"x")],
     "through a symlink"),
    ("write through a file", [entry("f", b"x"), entry("f/g", b"x")], "through a non-directory"),
    ("hard link outside", [entry("h", kind=LNK, link="../../../../victim/passwd")], "hard link target"),
    ("hard link absolute", [entry("h", kind=LNK, link="VICTIM/passwd")], "hard link target"),
    ("hard link through symlink",
     [entry("l", kind=SYM, link="VICTIM"), entry("h", kind=LNK, link="l/passwd")], "through a symlink"),
    ("relative symlink escaping", [entry("s", kind=SYM, link="../../etc/shadow")], "escapes the layer root"),
    ("nested relative symlink escaping", [entry("a/", kind=DIR), entry("a/s", kind=SYM, link="../../x")],
     "escapes the layer root"),
    ("character device", [entry("dev/", kind=DIR), entry("dev/mem", kind=tarfile.CHRTYPE)], "device node"),
    ("block device", [entry("sda", kind=tarfile.BLKTYPE)], "device node"),
    ("whiteout through symlink", [entry("l", kind=SYM, link="VICTIM"), entry("l/.wh.passwd")],
     "through a symlink"),
    ("opaque marker through symlink", [entry("l", kind=SYM, link="VICTIM"), entry("l/.wh..wh..opq")],
     "through a symlink"),
]


async def chunks(data: bytes) -> AsyncIterator[bytes]:
    for i in range(0, len(data), 1000):
        yield data[i:i + 1000]


def snapshot(root: Path) -> dict[str, tuple[int, bytes | None, list[str]]]:
    """Every path under `root`: its mode, content (regular files) and extended attributes."""
    out: dict[str, tuple[int, bytes | None, list[str]]] = {}
    for dirpath, dirnames, filenames in os.walk(root):
        for name in dirnames + filenames:
            path = Path(dirpath) / name
            mode = os.lstat(path).st_mode
            data = path.read_bytes() if stat.S_ISREG(mode) else None
            out[str(path.relative_to(root))] = (mode, data, sorted(os.listxattr(path, follow_symlinks=False)))
    return out


def aimed_at(victim: Path, layer: list[Entry]) -> bytes:
    """The layer as a tar, "VICTIM" in names and link targets replaced by the victim's path."""
    aimed = []
    for info, data in layer:
        copy = copy_module.copy(info)
        copy.name, copy.linkname = (v.replace("VICTIM", str(victim)) for v in (info.name, info.linkname))
        aimed.append((copy, data))
    return tar_of(*aimed)


@pytest.fixture
def victim(tmp_path: Path) -> Path:
    """What the malicious layers aim at: a directory with a passwd file, outside the store."""
    (tmp_path / "victim").mkdir()
    (tmp_path / "victim" / "passwd").write_text("root:x:0:0::/root:/bin/sh\n")
    return tmp_path / "victim"


@pytest.fixture
def store(tmp_path: Path) -> ImageStore:
    """A store that already holds one image, so 'unchanged' covers existing content too."""
    s = ImageStore(tmp_path / "store")
    asyncio.run(s.import_rootfs(chunks(GOOD_LAYER), "base:1", []))
    return s


@pytest.mark.parametrize(("layer", "message"), [(m, msg) for _, m, msg in MALICIOUS_LAYERS],
                         ids=[case for case, _, _ in MALICIOUS_LAYERS])
def test_malicious_layer_is_refused_by_load(store: ImageStore, tmp_path: Path, victim: Path,
                                            layer: list[Entry], message: str) -> None:
    before = snapshot(tmp_path)
    archive = docker_save([tar_of(entry("first", b"1")), aimed_at(victim, layer)])

    with pytest.raises(InvalidArgument, match="refusing archive member") as err:
        asyncio.run(store.load(chunks(archive)))

    assert message.replace("VICTIM", str(victim)) in str(err.value)
    assert snapshot(tmp_path) == before
    assert [s.repo_tags for s in store.list()] == [["base:1"]]


@pytest.mark.parametrize(("layer", "message"), [(m, msg) for _, m, msg in MALICIOUS_LAYERS],
                         ids=[case for case, _, _ in MALICIOUS_LAYERS])
def test_malicious_rootfs_is_refused_by_import(store: ImageStore, tmp_path: Path, victim: Path,
                                               layer: list[Entry], message: str) -> None:
    before = snapshot(tmp_path)

    with pytest.raises(InvalidArgument, match="refusing archive member") as err:
        asyncio.run(store.import_rootfs(chunks(aimed_at(victim, layer)), "evil:1", []))

    assert message.replace("VICTIM", str(victim)) in str(err.value)
    assert snapshot(tmp_path) == before


def _truncated() -> bytes:
    archive = docker_save([tar_of(entry("big", os.urandom(50_000)))])
    return archive[: len(archive) // 2]


BAD_ARCHIVES: list[tuple[str, bytes, str]] = [
    ("empty", b"", "invalid image archive"),
    ("not a tar", b"this is not a tar archive at all" * 40, "invalid image archive"),
    ("truncated", _truncated(), "invalid image archive"),
    ("missing manifest", tar_of(entry("hello", b"hi")), "no manifest.json"),
    ("manifest not a list", tar_of(entry("manifest.json", b"{}")), "manifest.json is not a non-empty list"),
    ("missing layer", tar_of(entry("c.json", b'{"rootfs": {"type": "layers", "diff_ids": []}}'),
                             entry("manifest.json", b'[{"Config": "c.json", "Layers": ["0/layer.tar"]}]')),
     "1 layers but the config lists 0"),
    ("config digest mismatch", docker_save([GOOD_LAYER], config_name=f"{'0' * 64}.json"),
     "does not match digest"),
    ("layer diff id mismatch", docker_save([GOOD_LAYER, GOOD_LAYER + b"\0" * 512],
                                           diff_ids=[sha(GOOD_LAYER), sha(b"other")]),
     "does not match the image's diff ID"),
    ("layer not a tar", docker_save([b"garbage" * 100]), "not a valid tar archive"),
]


@pytest.mark.parametrize(("archive", "message"), [(a, m) for _, a, m in BAD_ARCHIVES],
                         ids=[case for case, _, _ in BAD_ARCHIVES])
def test_bad_archive_is_refused_and_changes_nothing(store: ImageStore, tmp_path: Path, archive: bytes,
                                                    message: str) -> None:
    before = snapshot(tmp_path)

    with pytest.raises(InvalidArgument) as err:
        asyncio.run(store.load(chunks(archive)))

    assert message in str(err.value)
    assert snapshot(tmp_path) == before


def test_allowed_members_are_kept(store: ImageStore) -> None:
    """The positive control: absolute symlinks, inner relative ones, links and setuid are normal."""
    setuid, _ = info_data = entry("bin/su", b"su")
    setuid.mode = 0o4755
    layer = tar_of(entry("bin/", kind=DIR), entry("bin/busybox", b"bb"), info_data,
                   entry("bin/sh", kind=SYM, link="/bin/busybox"),
                   entry("bin/ls", kind=SYM, link="../bin/busybox"),
                   entry("bin/hard", kind=LNK, link="bin/busybox"))

    asyncio.run(store.import_rootfs(chunks(layer), "ok:1", []))

    root = store.resolve("ok:1").layers[0] / "bin"
    assert os.readlink(root / "sh") == "/bin/busybox" and os.readlink(root / "ls") == "../bin/busybox"
    assert os.stat(root / "su").st_mode & 0o7777 == 0o4755
    assert os.stat(root / "hard").st_ino == os.stat(root / "busybox").st_ino

"""The local image store (shoal/agent/images): import, load (docker save and OCI layouts), list,
inspect, tag, remove, resolve, whiteouts, and the busybox archive tools/build_busybox_image.py makes.

Unpacking a layer keeps owners and makes overlay whiteouts, which needs root; those tests skip
without it.
"""

from __future__ import annotations

import asyncio
import gzip
import hashlib
import io
import json
import os
import stat
import subprocess
import sys
import tarfile
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest

from shoal.agent.exec.protocol import ImageNotFound
from shoal.agent.images.config import host_arch
from shoal.agent.images.refs import normalize
from shoal.agent.images.store import ImageStore
from shoal.api.errors import Conflict, InvalidArgument, NotFound

ROOT = Path(__file__).resolve().parents[2]
GZIP_LAYER = "application/vnd.oci.image.layer.v1.tar+gzip"
needs_root = pytest.mark.skipif(os.geteuid() != 0, reason="needs root (owners, mknod, trusted xattrs)")


# -- archive builders -----------------------------------------------------------------------

Entry = tuple[tarfile.TarInfo, bytes]


def entry(name: str, data: bytes = b"", *, kind: bytes = tarfile.REGTYPE, mode: int = 0o644,
          link: str = "", uid: int = 0, gid: int = 0, mtime: int = 1_600_000_000) -> Entry:
    info = tarfile.TarInfo(name)
    info.type, info.mode, info.linkname, info.uid, info.gid, info.mtime = kind, mode, link, uid, gid, mtime
    info.size = len(data) if kind == tarfile.REGTYPE else 0
    return info, data


def tar_of(*entries: Entry) -> bytes:
    out = io.BytesIO()
    with tarfile.open(fileobj=out, mode="w", format=tarfile.PAX_FORMAT) as tar:
        for info, data in entries:
            tar.addfile(info, io.BytesIO(data) if info.isreg() else None)
    return out.getvalue()


def sha(data: bytes) -> str:
    return "sha256:" + hashlib.sha256(data).hexdigest()


def image_config(layers: list[bytes], **inner: Any) -> bytes:
    return json.dumps({
        "architecture": host_arch(), "os": "linux", "created": "2024-05-06T07:08:09.123456789Z",
        "config": inner, "rootfs": {"type": "layers", "diff_ids": [sha(x) for x in layers]},
    }).encode()


def docker_save(layers: list[bytes], tags: list[str], *, gzip_layers: bool = False, **inner: Any) -> bytes:
    """The classic `docker save` shape: <hex>.json config, <n>/layer.tar, manifest.json."""
    config = image_config(layers, **inner)
    files = [entry(f"{sha(config)[7:]}.json", config)]
    for i, layer in enumerate(layers):
        files.append(entry(f"{i}/layer.tar", gzip.compress(layer, mtime=0) if gzip_layers else layer))
    manifest = [{"Config": f"{sha(config)[7:]}.json", "RepoTags": tags,
                 "Layers": [f"{i}/layer.tar" for i in range(len(layers))]}]
    files.append(entry("manifest.json", json.dumps(manifest).encode()))
    return tar_of(*files)


def oci_layout(layers: list[bytes], annotations: dict[str, str], **inner: Any) -> bytes:
    """An OCI layout with gzip layers behind a two-platform index (only this host's is complete)."""
    blobs: dict[str, bytes] = {}

    def put(data: bytes) -> dict[str, object]:
        blobs[sha(data)] = data
        return {"digest": sha(data), "size": len(data)}

    config = image_config(layers, **inner)
    manifest = json.dumps({"schemaVersion": 2, "config": put(config),
                           "layers": [{**put(gzip.compress(x)), "mediaType": GZIP_LAYER}
                                      for x in layers]}).encode()
    other = {"digest": sha(b"missing"), "size": 7, "platform": {"os": "linux", "architecture": "s390x-nope"}}
    index = json.dumps({"schemaVersion": 2, "manifests": [
        other, {**put(manifest), "platform": {"os": "linux", "architecture": host_arch()}}]}).encode()
    top = {"schemaVersion": 2, "manifests": [{**put(index), "annotations": annotations,
                                              "mediaType": "application/vnd.oci.image.index.v1+json"}]}
    files = [entry(f"blobs/sha256/{d[7:]}", data) for d, data in blobs.items()]
    files += [entry("oci-layout", b'{"imageLayoutVersion": "1.0.0"}'),
              entry("index.json", json.dumps(top).encode())]
    return tar_of(*files)


async def chunks(data: bytes, size: int = 4096) -> AsyncIterator[bytes]:
    for i in range(0, len(data), size):
        yield data[i:i + size]


def load(store: ImageStore, data: bytes) -> list[str]:
    return asyncio.run(store.load(chunks(data)))


def import_(store: ImageStore, data: bytes, ref: str = "", changes: list[str] | None = None) -> str:
    return asyncio.run(store.import_rootfs(chunks(data), ref, changes or []))


@pytest.fixture(scope="module")
def busybox_tar(tmp_path_factory: pytest.TempPathFactory) -> bytes:
    if not os.access("/bin/busybox", os.X_OK):
        pytest.skip("busybox-static is not installed")
    out = tmp_path_factory.mktemp("bb") / "busybox.tar"
    subprocess.run([sys.executable, str(ROOT / "tools/build_busybox_image.py"), str(out)], check=True)
    return out.read_bytes()


@pytest.fixture
def store(tmp_path: Path) -> ImageStore:
    return ImageStore(tmp_path / "images")


# -- references -----------------------------------------------------------------------------

@pytest.mark.parametrize(("ref", "want"), [
    ("busybox", "busybox:latest"),
    ("busybox:latest", "busybox:latest"),
    ("docker.io/library/busybox:latest", "busybox:latest"),
    ("index.docker.io/library/busybox", "busybox:latest"),
    ("docker.io/foo/bar:1.2", "foo/bar:1.2"),
    ("localhost:5000/app", "localhost:5000/app:latest"),
    ("registry.example.com/team/app:v2", "registry.example.com/team/app:v2"),
])
def test_references_normalise_like_docker(ref: str, want: str) -> None:
    assert normalize(ref) == want


@pytest.mark.parametrize("ref", ["BusyBox", "busybox:", "a/../b", "busybox@sha256:" + "0" * 64, "", " x"])
def test_bad_references_are_refused(ref: str) -> None:
    with pytest.raises(InvalidArgument, match="invalid reference format"):
        normalize(ref)


# -- import ---------------------------------------------------------------------------------

@needs_root
def test_import_of_a_directory_tar_keeps_files_and_applies_changes(store: ImageStore, tmp_path: Path) -> None:
    rootfs = tmp_path / "rootfs"
    (rootfs / "bin").mkdir(parents=True)
    (rootfs / "bin" / "app").write_bytes(b"#!/bin/sh\necho app\n")
    os.chown(rootfs / "bin" / "app", 1234, 5678)
    os.chmod(rootfs / "bin" / "app", 0o4755)
    os.utime(rootfs / "bin" / "app", (1_500_000_000, 1_500_000_000))
    os.symlink("/bin/busybox", rootfs / "bin" / "sh")
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w:gz") as tar:
        tar.add(rootfs, arcname=".")
    changes = ['CMD ["/bin/app", "-x"]', 'ENV A=1 B="two words"', "WORKDIR /srv", "USER nobody",
               "ENTRYPOINT /bin/tini --", "LABEL team=infra"]

    image_id = import_(store, buf.getvalue(), "myapp:1", changes)

    resolved = store.resolve("myapp:1")
    assert resolved.image_id == image_id and image_id.startswith("sha256:")
    assert resolved.config.cmd == ["/bin/app", "-x"]
    assert resolved.config.entrypoint == ["/bin/sh", "-c", "/bin/tini --"]
    assert resolved.config.env == ["A=1", "B=two words"]
    assert (resolved.config.working_dir, resolved.config.user) == ("/srv", "nobody")
    assert resolved.config.labels == {"team": "infra"}
    app = os.lstat(resolved.layers[0] / "bin" / "app")
    assert (stat.S_IMODE(app.st_mode), app.st_uid, app.st_gid) == (0o4755, 1234, 5678)
    assert app.st_mtime == 1_500_000_000
    assert os.readlink(resolved.layers[0] / "bin" / "sh") == "/bin/busybox"
    assert [s.repo_tags for s in store.list()] == [["myapp:1"]]


@needs_root
def test_untagged_import_is_listed_and_found_by_id_prefix(store: ImageStore) -> None:
    image_id = import_(store, tar_of(entry("hello", b"hi")))

    assert [(s.id, s.repo_tags, s.size) for s in store.list()] == [(image_id, [], 2)]
    assert store.resolve(image_id[7:19]).image_id == image_id
    assert store.inspect(image_id)["RepoTags"] == []


def test_import_with_an_unknown_change_is_refused(store: ImageStore) -> None:
    with pytest.raises(InvalidArgument, match="FROB"):
        import_(store, tar_of(entry("hello", b"hi")), "x", ["FROB it"])
    assert store.list() == []


# -- busybox archive from the tool ----------------------------------------------------------

@needs_root
def test_busybox_archive_loads_and_resolves_by_any_name(store: ImageStore, busybox_tar: bytes) -> None:
    assert load(store, busybox_tar) == ["busybox:latest"]

    image_id = store.resolve("busybox").image_id
    for ref in ("busybox:latest", "docker.io/library/busybox:latest", image_id, image_id[7:19],
                image_id[:19]):
        assert store.resolve(ref).image_id == image_id
    resolved = store.resolve("busybox")
    assert resolved.config.cmd == ["sh"]
    assert resolved.config.env == ["PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"]
    layer = resolved.layers[0]
    assert os.readlink(layer / "bin" / "sh") == "busybox"
    assert stat.S_IMODE(os.lstat(layer / "tmp").st_mode) == 0o1777
    assert (layer / "etc" / "passwd").read_text().startswith("root:x:0:0:root:/root:/bin/sh\n")
    out = subprocess.run(["chroot", str(layer), "/bin/sh", "-c", "echo hello from $(basename $0)"],
                         capture_output=True, text=True, check=True)
    assert out.stdout == "hello from sh\n"


@needs_root
def test_busybox_inspect_and_list_agree_and_survive_a_restart(tmp_path: Path, busybox_tar: bytes) -> None:
    load(ImageStore(tmp_path / "s"), busybox_tar)

    reopened = ImageStore(tmp_path / "s")
    view = reopened.inspect("busybox")
    [summary] = reopened.list()
    assert view["Id"] == summary.id and view["RepoTags"] == summary.repo_tags == ["busybox:latest"]
    assert view["Size"] == summary.size > 1_000_000
    assert view["Created"] == "2024-01-01T00:00:00Z" and summary.created == 1704067200
    assert (view["Os"], view["Architecture"], view["RepoDigests"]) == ("linux", host_arch(), [])
    assert view["Config"]["Cmd"] == ["sh"] and view["Config"]["Entrypoint"] is None  # type: ignore[index]
    rootfs = view["RootFS"]
    assert isinstance(rootfs, dict) and rootfs["Type"] == "layers" and len(rootfs["Layers"]) == 1


def test_busybox_tool_is_deterministic(tmp_path: Path, busybox_tar: bytes) -> None:
    again = tmp_path / "again.tar"
    subprocess.run([sys.executable, str(ROOT / "tools/build_busybox_image.py"), str(again)], check=True)
    assert again.read_bytes() == busybox_tar
    with tarfile.open(again) as tar:
        [manifest] = json.load(tar.extractfile("manifest.json"))  # type: ignore[arg-type]
        names = tar.getnames()
    assert manifest["RepoTags"] == ["busybox:latest"] and manifest["Config"] in names


# -- tag and remove -------------------------------------------------------------------------

@needs_root
def test_tag_then_remove_untags_first_and_deletes_with_the_last_tag(store: ImageStore) -> None:
    layer = tar_of(entry("f", b"x"))
    load(store, docker_save([layer], ["app:1"]))
    image_id = store.resolve("app:1").image_id
    layer_dir = store.resolve("app:1").layers[0]

    store.tag("app:1", "registry.example.com/app:prod")
    assert store.inspect(image_id)["RepoTags"] == ["app:1", "registry.example.com/app:prod"]
    assert store.remove("app:1", force=False) == [{"Untagged": "app:1"}]
    assert layer_dir.is_dir()
    assert store.remove("registry.example.com/app:prod", force=False) == [
        {"Untagged": "registry.example.com/app:prod"}, {"Deleted": image_id}]

    assert not layer_dir.exists() and store.list() == []
    with pytest.raises(NotFound, match="No such image: app:1"):
        store.inspect("app:1")


@needs_root
def test_remove_by_id_with_two_tags_needs_force(store: ImageStore) -> None:
    load(store, docker_save([tar_of(entry("f", b"x"))], ["a:1", "b:2"]))
    image_id = store.resolve("a:1").image_id

    with pytest.raises(Conflict, match="must be forced"):
        store.remove(image_id[7:19], force=False)
    assert store.remove(image_id, force=True) == [
        {"Untagged": "a:1"}, {"Untagged": "b:2"}, {"Deleted": image_id}]


@needs_root
def test_a_layer_two_images_share_stays_until_both_are_removed(store: ImageStore) -> None:
    base, top = tar_of(entry("base", b"b")), tar_of(entry("top", b"t"))
    load(store, docker_save([base], ["base:1"]))
    load(store, docker_save([base, top], ["app:1"], gzip_layers=True))
    base_dir = store.resolve("base:1").layers[0]
    assert store.resolve("app:1").layers[0] == base_dir

    store.remove("base:1", force=False)

    assert (base_dir / "base").read_bytes() == b"b"
    assert [p.name for p in store.resolve("app:1").layers] == [base_dir.name, sha(top)[7:]]


def test_unknown_references(store: ImageStore) -> None:
    with pytest.raises(ImageNotFound, match="No such image: nothere"):
        store.resolve("nothere")
    with pytest.raises(NotFound, match="No such image: nothere"):
        store.remove("nothere", force=True)
    with pytest.raises(NotFound, match="No such image: nothere"):
        store.tag("nothere", "x:1")


# -- OCI layout and whiteouts ---------------------------------------------------------------

@needs_root
def test_oci_layout_loads_the_host_platform_under_its_annotated_name(store: ImageStore) -> None:
    layer = tar_of(entry("bin/", kind=tarfile.DIRTYPE, mode=0o755), entry("bin/app", b"app", mode=0o755))
    names = load(store, oci_layout([layer], {"org.opencontainers.image.ref.name": "example.com/team/app:2"},
                                   Cmd=["/bin/app"]))

    assert names == ["example.com/team/app:2"]
    resolved = store.resolve("example.com/team/app:2")
    assert resolved.config.cmd == ["/bin/app"]
    assert (resolved.layers[0] / "bin" / "app").read_bytes() == b"app"
    assert store.inspect("example.com/team/app:2")["RootFS"] == {"Type": "layers", "Layers": [sha(layer)]}


@needs_root
def test_whiteouts_become_overlay_whiteouts(store: ImageStore) -> None:
    lower = tar_of(entry("a/", kind=tarfile.DIRTYPE, mode=0o755), entry("a/keep", b"k"),
                   entry("a/gone", b"g"), entry("d/", kind=tarfile.DIRTYPE, mode=0o755), entry("d/old", b"o"))
    upper = tar_of(entry("a/.wh.gone"), entry("d/", kind=tarfile.DIRTYPE, mode=0o755),
                   entry("d/.wh..wh..opq"), entry("d/new", b"n"))
    load(store, docker_save([lower, upper], ["wh:1"]))

    low, up = store.resolve("wh:1").layers
    assert (low / "a" / "gone").read_bytes() == b"g"
    gone = os.lstat(up / "a" / "gone")
    assert stat.S_ISCHR(gone.st_mode) and gone.st_rdev == os.makedev(0, 0)
    assert os.getxattr(up / "d", "trusted.overlay.opaque") == b"y"
    assert sorted(os.listdir(up / "a")) == ["gone"] and sorted(os.listdir(up / "d")) == ["new"]

"""Build `busybox:latest` as an image archive from the host's busybox-static binary.

Run by `make setup` (`.venv/bin/python tools/build_busybox_image.py build/images/busybox.tar`);
the tests and the demo load the result into shoald. The archive is what `docker save` writes
since Docker 25: an OCI image layout (oci-layout, index.json, blobs/sha256/...) plus the classic
manifest.json (Config, RepoTags, Layers), so both Docker's loaders and ours read it.

Deterministic: the same busybox binary gives the same bytes (fixed times, owners, order). The
archive is written to a temporary file and renamed, so a rerun or an interrupted run never
leaves a half-written archive at OUT.
"""

from __future__ import annotations

import argparse
import hashlib
import io
import json
import os
import platform
import subprocess
import sys
import tarfile
import tempfile
from pathlib import Path

MTIME = 1704067200  # 2024-01-01T00:00:00Z: any fixed time keeps the bytes reproducible
CREATED = "2024-01-01T00:00:00Z"
NAME = "docker.io/library/busybox:latest"
REPO_TAG = "busybox:latest"
ENV = ["PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"]
ARCHES = {"x86_64": "amd64", "aarch64": "arm64", "armv7l": "arm"}

PASSWD = "root:x:0:0:root:/root:/bin/sh\nnobody:x:65534:65534:nobody:/nonexistent:/bin/false\n"
GROUP = "root:x:0:\nnogroup:x:65534:\n"
HOSTS = "127.0.0.1\tlocalhost\n::1\tlocalhost ip6-localhost ip6-loopback\n"
DIRS = {"bin": 0o755, "dev": 0o755, "etc": 0o755, "proc": 0o755, "root": 0o700, "run": 0o755,
        "sys": 0o755, "tmp": 0o1777, "var": 0o755, "var/www": 0o755}
FILES = {"etc/passwd": PASSWD, "etc/group": GROUP, "etc/hostname": "", "etc/hosts": HOSTS}

MEDIA_MANIFEST = "application/vnd.oci.image.manifest.v1+json"
MEDIA_CONFIG = "application/vnd.oci.image.config.v1+json"
MEDIA_LAYER = "application/vnd.oci.image.layer.v1.tar"


def _info(name: str, kind: bytes, mode: int, size: int = 0, linkname: str = "") -> tarfile.TarInfo:
    info = tarfile.TarInfo(name)
    info.type, info.mode, info.size, info.linkname = kind, mode, size, linkname
    info.mtime, info.uid, info.gid, info.uname, info.gname = MTIME, 0, 0, "", ""
    return info


def _tar(entries: list[tuple[tarfile.TarInfo, bytes]]) -> bytes:
    """A tar of `entries` in the given order (the caller sorts), no compression."""
    out = io.BytesIO()
    with tarfile.open(fileobj=out, mode="w", format=tarfile.PAX_FORMAT) as tar:
        for info, data in entries:
            tar.addfile(info, io.BytesIO(data) if info.isreg() else None)
    return out.getvalue()


def applets(busybox: Path) -> list[str]:
    """The applet names this busybox was built with (one symlink each)."""
    listed = subprocess.run([str(busybox), "--list"], check=True, capture_output=True, text=True).stdout
    return sorted({name for name in listed.split() if name and "/" not in name and name != "busybox"})


def rootfs_layer(busybox: Path) -> bytes:
    """The single layer: busybox, a relative symlink per applet in /bin, and a minimal /etc."""
    binary = busybox.read_bytes()
    entries = [(_info(d, tarfile.DIRTYPE, mode), b"") for d, mode in DIRS.items()]
    entries.append((_info("bin/busybox", tarfile.REGTYPE, 0o755, len(binary)), binary))
    for applet in applets(busybox):
        # Relative ("busybox", next to it): resolves the same inside the container and on the host.
        entries.append((_info(f"bin/{applet}", tarfile.SYMTYPE, 0o777, linkname="busybox"), b""))
    for path, text in FILES.items():
        data = text.encode()
        entries.append((_info(path, tarfile.REGTYPE, 0o644, len(data)), data))
    return _tar(sorted(entries, key=lambda e: e[0].name))


def _json(value: object) -> bytes:
    return json.dumps(value, sort_keys=True, separators=(",", ":")).encode()


def _digest(data: bytes) -> str:
    return "sha256:" + hashlib.sha256(data).hexdigest()


def image_archive(layer: bytes) -> bytes:
    """The docker-save/OCI archive around `layer`."""
    config = _json({
        "architecture": ARCHES.get(platform.machine(), platform.machine()), "os": "linux",
        "created": CREATED, "config": {"Cmd": ["sh"], "Env": ENV},
        "rootfs": {"type": "layers", "diff_ids": [_digest(layer)]},
        "history": [{"created": CREATED, "created_by": "tools/build_busybox_image.py"}],
    })
    manifest = _json({
        "schemaVersion": 2, "mediaType": MEDIA_MANIFEST,
        "config": {"mediaType": MEDIA_CONFIG, "digest": _digest(config), "size": len(config)},
        "layers": [{"mediaType": MEDIA_LAYER, "digest": _digest(layer), "size": len(layer)}],
    })
    index = _json({"schemaVersion": 2, "mediaType": "application/vnd.oci.image.index.v1+json", "manifests": [{
        "mediaType": MEDIA_MANIFEST, "digest": _digest(manifest), "size": len(manifest),
        "annotations": {"io.containerd.image.name": NAME, "org.opencontainers.image.ref.name": "latest"},
    }]})
    blob = {data: "blobs/sha256/" + hashlib.sha256(data).hexdigest() for data in (config, layer, manifest)}
    docker_manifest = _json([{"Config": blob[config], "RepoTags": [REPO_TAG], "Layers": [blob[layer]]}])
    files = {path: data for data, path in blob.items()}
    files.update({"index.json": index, "manifest.json": docker_manifest,
                  "oci-layout": _json({"imageLayoutVersion": "1.0.0"})})
    entries = [(_info(d, tarfile.DIRTYPE, 0o755), b"") for d in ("blobs", "blobs/sha256")]
    entries += [(_info(path, tarfile.REGTYPE, 0o644, len(data)), data) for path, data in files.items()]
    return _tar(sorted(entries, key=lambda e: e[0].name))


def write_atomic(out: Path, data: bytes) -> None:
    out.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=out.parent, prefix=f".{out.name}.")
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.chmod(tmp, 0o644)
        os.replace(tmp, out)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("out", type=Path, help="where to write the archive (e.g. build/images/busybox.tar)")
    parser.add_argument("--busybox", type=Path, default=Path("/bin/busybox"), help="a static busybox")
    args = parser.parse_args(argv)
    if not os.access(args.busybox, os.X_OK):
        print(f"{args.busybox} is missing or not executable (install busybox-static)", file=sys.stderr)
        return 1
    write_atomic(args.out, image_archive(rootfs_layer(args.busybox)))
    print(f"wrote {args.out} ({REPO_TAG})")
    return 0


if __name__ == "__main__":
    sys.exit(main())

"""Build `nginx:bench` as an image archive from the host's Debian nginx and busybox-static.

Used by the mesh benchmark (bench/bench_mesh.py) as a web server that is not the bottleneck:
`.venv/bin/python tools/build_nginx_image.py build/bench/nginx.tar` (`make nginx-image`; needs
the Debian packages nginx-light (or nginx) and busybox-static). The archive has the same format as
tools/build_busybox_image.py's (docker save: OCI layout + manifest.json), one layer with:

- busybox and its applets in /bin (for debugging: `sh`, `wget`, `hostname`...);
- /usr/sbin/nginx and every shared library `ldd` lists for it, at the paths ldd prints (the
  dynamic loader included), each the resolved file's bytes;
- /etc/nginx/nginx.conf: one worker process, `daemon off`, no access log, errors to stderr at
  `crit`; port 80 serves /usr/share/nginx/html/index.html (612 bytes, as nginx's default page)
  and `/host` answers the container's hostname (`return 200 "$hostname\\n"`), so a client can
  tell which task answered;
- the directories nginx expects (/var/lib/nginx, /var/log/nginx, /run).

Cmd: `nginx -c /etc/nginx/nginx.conf`. Deterministic for the same host binaries. Written to a
temporary file and renamed.
"""

from __future__ import annotations

import argparse
import hashlib
import os
import platform
import re
import shutil
import subprocess
import sys
import tarfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import build_busybox_image as bb

NAME = "docker.io/library/nginx:bench"
REPO_TAG = "nginx:bench"
CMD = ["nginx", "-c", "/etc/nginx/nginx.conf"]
NGINX_CONF = """\
user root;
worker_processes 1;
daemon off;
error_log stderr crit;
pid /run/nginx.pid;
events {
    worker_connections 4096;
}
http {
    access_log off;
    default_type text/html;
    sendfile on;
    tcp_nopush on;
    tcp_nodelay on;
    keepalive_timeout 65;
    keepalive_requests 1000000;
    server {
        listen 80 default_server;
        root /usr/share/nginx/html;
        location = /host {
            default_type text/plain;
            return 200 "$hostname\\n";
        }
        location / {
            index index.html;
        }
    }
}
"""
INDEX_HTML = ("<!DOCTYPE html>\n<html><head><title>nginx:bench</title></head>\n<body>\n"
              + "<p>" + "shoal mesh benchmark " * 26 + "</p>\n</body></html>\n")[:611] + "\n"
DIRS = {"usr": 0o755, "usr/sbin": 0o755, "usr/share": 0o755, "usr/share/nginx": 0o755,
        "usr/share/nginx/html": 0o755, "etc/nginx": 0o755, "var/lib": 0o755, "var/lib/nginx": 0o755,
        "var/log": 0o755, "var/log/nginx": 0o755, "var/lock": 0o755}


def shared_libraries(binary: Path) -> list[Path]:
    """The absolute paths ldd prints for `binary` (libraries and the loader), in ldd's order."""
    out = subprocess.run(["ldd", str(binary)], check=True, capture_output=True, text=True).stdout
    found: list[Path] = []
    for line in out.splitlines():
        m = re.search(r"(?:=>\s*)?(/\S+)\s+\(0x", line)
        if m and Path(m.group(1)) not in found:
            found.append(Path(m.group(1)))
    return found


def _file(path: str, data: bytes, mode: int = 0o644) -> tuple[tarfile.TarInfo, bytes]:
    return bb._info(path, tarfile.REGTYPE, mode, len(data)), data


def rootfs_layer(busybox: Path, nginx: Path) -> bytes:
    return layer_with(busybox, nginx, "usr/sbin/nginx", DIRS, {
        "etc/nginx/nginx.conf": NGINX_CONF.encode(), "usr/share/nginx/html/index.html": INDEX_HTML.encode()})


def layer_with(busybox: Path, program: Path, program_path: str, dirs_modes: dict[str, int],
               files: dict[str, bytes]) -> bytes:
    """busybox and its applets in /bin, `program` at `program_path` with every library ldd lists for
    it, the directories `dirs_modes` and the regular `files` (path -> bytes)."""
    entries = [(bb._info(d, tarfile.DIRTYPE, mode), b"") for d, mode in {**bb.DIRS, **dirs_modes}.items()]
    entries.append(_file("bin/busybox", busybox.read_bytes(), 0o755))
    entries += [(bb._info(f"bin/{a}", tarfile.SYMTYPE, 0o777, linkname="busybox"), b"")
                for a in bb.applets(busybox)]
    for path, text in bb.FILES.items():
        entries.append(_file(path, text.encode()))
    entries.append(_file(program_path, program.read_bytes(), 0o755))
    dirs = {info.name for info, _ in entries if info.isdir()}
    for lib in shared_libraries(program):
        rel = str(lib).lstrip("/")
        parts = rel.split("/")
        for i in range(1, len(parts)):  # /lib/x86_64-linux-gnu, /lib64 ...
            d = "/".join(parts[:i])
            if d not in dirs:
                dirs.add(d)
                entries.append((bb._info(d, tarfile.DIRTYPE, 0o755), b""))
        entries.append(_file(rel, lib.resolve().read_bytes(), 0o755))
    entries += [_file(path, data) for path, data in files.items()]
    unique = {e[0].name: e for e in entries}  # a path listed twice keeps its last entry
    return bb._tar(sorted(unique.values(), key=lambda e: e[0].name))


def image_archive(layer: bytes) -> bytes:
    """The docker-save/OCI archive around `layer` (as build_busybox_image.image_archive)."""
    return archive(layer, name=NAME, repo_tag=REPO_TAG, cmd=CMD, exposed="80/tcp",
                   created_by="tools/build_nginx_image.py")


def archive(layer: bytes, *, name: str, repo_tag: str, cmd: list[str], exposed: str,
            created_by: str) -> bytes:
    """A one-layer docker-save/OCI archive: `name` (the full reference), `repo_tag` in manifest.json."""
    digest, js = bb._digest, bb._json
    config = js({
        "architecture": bb.ARCHES.get(platform.machine(), platform.machine()), "os": "linux",
        "created": bb.CREATED, "config": {"Cmd": cmd, "Env": bb.ENV, "ExposedPorts": {exposed: {}}},
        "rootfs": {"type": "layers", "diff_ids": [digest(layer)]},
        "history": [{"created": bb.CREATED, "created_by": created_by}],
    })
    manifest = js({
        "schemaVersion": 2, "mediaType": bb.MEDIA_MANIFEST,
        "config": {"mediaType": bb.MEDIA_CONFIG, "digest": digest(config), "size": len(config)},
        "layers": [{"mediaType": bb.MEDIA_LAYER, "digest": digest(layer), "size": len(layer)}],
    })
    index = js({"schemaVersion": 2, "mediaType": "application/vnd.oci.image.index.v1+json", "manifests": [{
        "mediaType": bb.MEDIA_MANIFEST, "digest": digest(manifest), "size": len(manifest),
        "annotations": {"io.containerd.image.name": name,
                        "org.opencontainers.image.ref.name": repo_tag.rsplit(":", 1)[-1]},
    }]})
    blob = {data: "blobs/sha256/" + hashlib.sha256(data).hexdigest() for data in (config, layer, manifest)}
    docker_manifest = js([{"Config": blob[config], "RepoTags": [repo_tag], "Layers": [blob[layer]]}])
    files = {path: data for data, path in blob.items()}
    files.update({"index.json": index, "manifest.json": docker_manifest,
                  "oci-layout": js({"imageLayoutVersion": "1.0.0"})})
    entries = [(bb._info(d, tarfile.DIRTYPE, 0o755), b"") for d in ("blobs", "blobs/sha256")]
    entries += [_file(path, data) for path, data in files.items()]
    return bb._tar(sorted(entries, key=lambda e: e[0].name))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("out", type=Path, help="where to write the archive (e.g. build/bench/nginx.tar)")
    parser.add_argument("--busybox", type=Path, default=Path("/bin/busybox"), help="a static busybox")
    parser.add_argument("--nginx", type=Path, default=Path(shutil.which("nginx") or "/usr/sbin/nginx"))
    args = parser.parse_args(argv)
    for tool, package in ((args.busybox, "busybox-static"), (args.nginx, "nginx-light")):
        if not os.access(tool, os.X_OK):
            print(f"{tool} is missing or not executable (install {package})", file=sys.stderr)
            return 1
    bb.write_atomic(args.out, image_archive(rootfs_layer(args.busybox, args.nginx)))
    print(f"wrote {args.out} ({REPO_TAG}, {args.out.stat().st_size >> 10} KiB)")
    return 0


if __name__ == "__main__":
    sys.exit(main())

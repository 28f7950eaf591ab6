"""Readers of the two image archive formats `docker load` accepts, staging what they find.

Called by the image store (agent/images/store.py, `load`) in a worker thread, with the spooled
archive on disk. Formats:

- docker save: manifest.json = [{"Config": "<hex>.json", "RepoTags": [...], "Layers": [...]}];
  layer paths are "<v1 id>/layer.tar" (before Docker 25) or "blobs/sha256/<hex>" (since).
- OCI image layout: oci-layout, index.json, blobs/sha256/<hex>; names come from the annotations
  io.containerd.image.name or org.opencontainers.image.ref.name of index.json's descriptors.
  Nested indexes (multi-platform images) are followed to this host's platform.

Members are read through tarfile's random access; nothing of the outer archive is extracted to
disk except into the staging area (blobs by digest, layers through agent/images/unpack.py).
Every digest an archive states is checked against the bytes.
"""

from __future__ import annotations

import gzip
import hashlib
import json
import posixpath
import re
import tarfile
import zlib
from pathlib import Path
from typing import IO, Any, NamedTuple

from shoal.agent.images.config import diff_ids, host_arch, parse_config
from shoal.agent.images.layout import Staging, digest_hex
from shoal.agent.images.refs import normalize
from shoal.api.errors import InvalidArgument

_JSON_LIMIT = 16 << 20  # manifests and configs are kilobytes; refuse to buffer absurd ones
_MAX_INDEX_DEPTH = 4
_NAME_ANNOTATIONS = ("io.containerd.image.name", "org.opencontainers.image.ref.name")
_DIGEST_IN_PATH = re.compile(r"(?:^|/)(?:sha256/)?([a-f0-9]{64})(?:\.json)?")
_UNSUPPORTED_LAYER = ("zstd", "nondistributable", "foreign")


class LoadedImage(NamedTuple):
    image_id: str  # "sha256:<config hex>"
    tags: list[str]  # normalised "name:tag"


class _Blob(NamedTuple):
    path: str  # inside the archive
    expected: str | None  # the digest the archive claims for it, if it claims one
    label: str


def read_archive(path: Path, staging: Staging) -> list[LoadedImage]:
    """Stage every image of the archive at `path`; InvalidArgument when it is not one we read."""
    try:
        with tarfile.open(path, "r:*") as tar:
            archive = _Archive(tar)
            if archive.has("manifest.json"):
                return _docker_save(archive, staging)
            if archive.has("index.json") and archive.has("oci-layout"):
                return _oci_layout(archive, staging)
    except (tarfile.TarError, EOFError, zlib.error, gzip.BadGzipFile) as e:
        raise InvalidArgument(f"invalid image archive: {e}") from e
    raise InvalidArgument(
        "invalid image archive: no manifest.json (docker save) nor oci-layout and index.json (OCI layout)"
    )


class _Archive:
    """Members of the outer tar by cleaned name (a later member of one name wins, as in tar)."""

    def __init__(self, tar: tarfile.TarFile) -> None:
        self.tar = tar
        self.members = {_clean(m.name): m for m in tar.getmembers()}

    def has(self, name: str) -> bool:
        return _clean(name) in self.members

    def open(self, name: str, label: str) -> IO[bytes]:
        member = self.members.get(_clean(name))
        if member is None:
            raise InvalidArgument(f"invalid image archive: {label}: {name!r} is missing")
        try:
            data = self.tar.extractfile(member)  # follows symlinks inside the archive only
        except KeyError as e:
            raise InvalidArgument(f"invalid image archive: {label}: {name!r} is a dangling link") from e
        if data is None:
            raise InvalidArgument(f"invalid image archive: {label}: {name!r} is not a file")
        return data

    def read(self, name: str, label: str, expected: str | None = None) -> bytes:
        with self.open(name, label) as f:
            data = f.read(_JSON_LIMIT + 1)
        if len(data) > _JSON_LIMIT:
            raise InvalidArgument(f"invalid image archive: {label}: {name!r} is too large")
        if expected is not None and hashlib.sha256(data).hexdigest() != digest_hex(expected):
            raise InvalidArgument(
                f"invalid image archive: {label}: {name!r} does not match digest {expected}"
            )
        return data

    def read_json(self, name: str, label: str, expected: str | None = None) -> Any:
        try:
            return json.loads(self.read(name, label, expected))
        except (UnicodeDecodeError, ValueError) as e:
            raise InvalidArgument(f"invalid image archive: {label}: {name!r} is not valid JSON: {e}") from e


def _clean(name: str) -> str:
    return posixpath.normpath("/" + name).lstrip("/")


def _stage_image(archive: _Archive, staging: Staging, config: _Blob, layers: list[_Blob]) -> str:
    """Stage one image's layers (those not in the store yet) and config; returns its ID."""
    data = archive.read(config.path, config.label, config.expected)
    parsed = parse_config(data, config.label)
    ids = diff_ids(parsed)
    if len(ids) != len(layers):
        raise InvalidArgument(
            f"invalid image archive: {config.label}: {len(layers)} layers but the config lists {len(ids)}"
        )
    for blob, diff_id in zip(layers, ids, strict=True):
        if staging.has_layer(diff_id):
            continue
        with archive.open(blob.path, blob.label) as f:
            digest = staging.add_blob(f, blob.label, blob.expected)
        staging.add_layer(digest, f"layer {blob.path!r}", expected_diff_id=diff_id)
    return staging.add_config(data)


def _claimed_digest(path: str) -> str | None:
    """Docker names configs and blobs by their digest ("<hex>.json", "blobs/sha256/<hex>")."""
    match = _DIGEST_IN_PATH.search(path)
    return f"sha256:{match.group(1)}" if match and match.end() == len(path) else None


def _docker_save(archive: _Archive, staging: Staging) -> list[LoadedImage]:
    manifest = archive.read_json("manifest.json", "manifest.json")
    if not isinstance(manifest, list) or not manifest:
        raise InvalidArgument("invalid image archive: manifest.json is not a non-empty list")
    loaded = []
    for i, entry in enumerate(manifest):
        label = f"manifest.json entry {i}"
        layers = entry.get("Layers") if isinstance(entry, dict) else None
        if not isinstance(layers, list) or not isinstance(entry.get("Config"), str):
            raise InvalidArgument(f"invalid image archive: {label} needs Config and Layers")
        if not all(isinstance(p, str) for p in layers):
            raise InvalidArgument(f"invalid image archive: {label}: Layers must be paths")
        tags = entry.get("RepoTags") or []
        if not isinstance(tags, list) or not all(isinstance(t, str) for t in tags):
            raise InvalidArgument(f"invalid image archive: {label}: RepoTags must be a list of names")
        config = _Blob(entry["Config"], _claimed_digest(entry["Config"]), f"{label} config")
        blobs = [_Blob(p, _claimed_digest(p) if p.startswith("blobs/") else None, f"{label} layer {p!r}")
                 for p in layers]
        image_id = _stage_image(archive, staging, config, blobs)
        loaded.append(LoadedImage(image_id, [normalize(t) for t in tags]))
    return loaded


def _descriptor_blob(desc: object, label: str) -> _Blob:
    if not isinstance(desc, dict) or not isinstance(desc.get("digest"), str):
        raise InvalidArgument(f"invalid image archive: {label}: descriptor without a digest")
    media_type = str(desc.get("mediaType") or "")
    if any(word in media_type for word in _UNSUPPORTED_LAYER):
        raise InvalidArgument(f"invalid image archive: {label}: unsupported media type {media_type}")
    digest = desc["digest"]
    return _Blob(f"blobs/sha256/{digest_hex(digest)}", digest, f"{label} {digest}")


def _oci_layout(archive: _Archive, staging: Staging) -> list[LoadedImage]:
    version = archive.read_json("oci-layout", "oci-layout")
    if not isinstance(version, dict) or not isinstance(version.get("imageLayoutVersion"), str):
        raise InvalidArgument("invalid image archive: oci-layout has no imageLayoutVersion")
    index = archive.read_json("index.json", "index.json")
    manifests = index.get("manifests") if isinstance(index, dict) else None
    if not isinstance(manifests, list) or not manifests:
        raise InvalidArgument("invalid image archive: index.json lists no manifests")
    loaded = []
    for i, desc in enumerate(manifests):
        label = f"index.json manifest {i}"
        manifest = _manifest(archive, _descriptor_blob(desc, label), 0)
        layers = manifest.get("layers")
        if not isinstance(layers, list):
            raise InvalidArgument(f"invalid image archive: {label}: manifest has no layers")
        config = _descriptor_blob(manifest.get("config"), f"{label} config")
        blobs = [_descriptor_blob(layer, f"{label} layer") for layer in layers]
        image_id = _stage_image(archive, staging, config, blobs)
        name = _ref_name(desc.get("annotations"))
        loaded.append(LoadedImage(image_id, [name] if name else []))
    return loaded


def _manifest(archive: _Archive, blob: _Blob, depth: int) -> dict[str, Any]:
    """The image manifest `blob` names, following image indexes to this host's platform."""
    doc = archive.read_json(blob.path, blob.label, blob.expected)
    if not isinstance(doc, dict):
        raise InvalidArgument(f"invalid image archive: {blob.label} is not a JSON object")
    if "config" in doc:
        return doc
    children = doc.get("manifests")
    if not isinstance(children, list) or depth >= _MAX_INDEX_DEPTH:
        raise InvalidArgument(f"invalid image archive: {blob.label} is neither a manifest nor an index")
    arch = host_arch()
    matching = [c for c in children if isinstance(c, dict) and isinstance(c.get("platform"), dict)
                and c["platform"].get("os") == "linux" and c["platform"].get("architecture") == arch]
    if not matching and len(children) == 1:
        matching = children
    if not matching:
        raise InvalidArgument(f"invalid image archive: {blob.label} has no image for linux/{arch}")
    return _manifest(archive, _descriptor_blob(matching[0], blob.label), depth + 1)


def _ref_name(annotations: object) -> str | None:
    if not isinstance(annotations, dict):
        return None
    for key in _NAME_ANNOTATIONS:
        value = annotations.get(key)
        if isinstance(value, str) and value:
            return normalize(value)
    return None

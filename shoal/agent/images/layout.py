"""The image store's files on disk, and the staging area every load or import fills first.

Called by the image store (agent/images/store.py) and the archive readers
(agent/images/archive.py). Layout under the store root:

    blobs/sha256/<hex>        layer blobs (as received, compressed or not) and configs
    layers/<diffid-hex>/      one unpacked layer: an overlayfs lowerdir
    layers/<diffid-hex>.json  {"size": bytes, "blob": "sha256:..."}; written before the dir appears
    images/<config-hex>.json  the image config (a copy of its blob)
    repositories.json         {"name:tag": "sha256:<config hex>"}
    tmp/                      staging areas; emptied when the store opens

A `Staging` holds everything one operation produced until `commit`, which only renames, so a
refused archive changes nothing and a crash leaves at most unreferenced blobs or layers.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import shutil
import tempfile
from pathlib import Path
from typing import IO, NamedTuple

from shoal.agent.images.unpack import unpack_layer
from shoal.api.errors import InvalidArgument

_DIGEST = re.compile(r"sha256:([a-f0-9]{64})")
_COPY_CHUNK = 1 << 20


class LayerInfo(NamedTuple):
    size: int  # bytes of file content, for Size in list/inspect
    blob: str  # digest of the blob it was unpacked from ("" if that blob is not kept)


def digest_hex(digest: str, what: str = "digest") -> str:
    """The hex of "sha256:<64 hex>"; InvalidArgument for anything else (other algorithms too)."""
    match = _DIGEST.fullmatch(digest) if isinstance(digest, str) else None
    if match is None:
        raise InvalidArgument(f"invalid {what}: {digest!r} (want sha256:<64 hex digits>)")
    return match.group(1)


def write_atomic(path: Path, data: bytes) -> None:
    """Write via a temporary sibling, fsync, rename: readers see the old or the new file."""
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=".tmp-")
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


class Layout:
    """Paths of one store root."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self.blobs = root / "blobs" / "sha256"
        self.layers = root / "layers"
        self.images = root / "images"
        self.tmp = root / "tmp"
        self.repositories = root / "repositories.json"

    def prepare(self) -> None:
        """Create the directories; drop staging areas a crashed process left behind."""
        for d in (self.blobs, self.layers, self.images):
            d.mkdir(parents=True, exist_ok=True)
        shutil.rmtree(self.tmp, ignore_errors=True)
        self.tmp.mkdir()

    def blob(self, hex_digest: str) -> Path:
        return self.blobs / hex_digest

    def layer_dir(self, hex_digest: str) -> Path:
        return self.layers / hex_digest

    def layer_meta(self, hex_digest: str) -> Path:
        return self.layers / f"{hex_digest}.json"

    def image_config(self, hex_digest: str) -> Path:
        return self.images / f"{hex_digest}.json"

    def read_layer(self, hex_digest: str) -> LayerInfo | None:
        """A committed layer's record, None if the layer is not (completely) there."""
        if not self.layer_dir(hex_digest).is_dir():
            return None
        try:
            raw = json.loads(self.layer_meta(hex_digest).read_bytes())
            return LayerInfo(int(raw["size"]), str(raw.get("blob", "")))
        except (OSError, ValueError, KeyError, TypeError):
            return None


class Staging:
    """The work area of one load or import under tmp/; nothing is visible before `commit`."""

    def __init__(self, layout: Layout) -> None:
        self.layout = layout
        self.dir = Path(tempfile.mkdtemp(dir=layout.tmp, prefix="stage-"))
        self.blobs: dict[str, Path] = {}  # hex -> staged file
        self.layers: dict[str, tuple[Path, LayerInfo]] = {}  # diff-id hex -> staged dir, record
        self.configs: dict[str, bytes] = {}  # config hex -> bytes
        self._count = 0

    def _new_path(self, kind: str) -> Path:
        self._count += 1
        return self.dir / f"{kind}-{self._count}"

    def add_blob(self, source: IO[bytes], label: str, expected: str | None = None) -> str:
        """Copy `source` in, hashing it; InvalidArgument if `expected` is given and differs."""
        path = self._new_path("blob")
        digest = hashlib.sha256()
        with path.open("wb") as out:
            while chunk := source.read(_COPY_CHUNK):
                digest.update(chunk)
                out.write(chunk)
        return self.adopt_blob(path, digest.hexdigest(), label, expected)

    def adopt_blob(self, path: Path, hex_digest: str, label: str, expected: str | None = None) -> str:
        """Take a file under self.dir whose sha256 the caller computed."""
        if expected is not None and digest_hex(expected) != hex_digest:
            raise InvalidArgument(f"{label}: digest mismatch: got sha256:{hex_digest}, want {expected}")
        self.blobs[hex_digest] = path
        return "sha256:" + hex_digest

    def has_layer(self, diff_id: str) -> bool:
        hex_digest = digest_hex(diff_id, "diff ID")
        return hex_digest in self.layers or self.layout.read_layer(hex_digest) is not None

    def add_layer(self, blob: str, label: str, expected_diff_id: str | None = None) -> str:
        """Unpack the staged blob `blob`; returns its diff ID (checked against the expected one)."""
        dest = self._new_path("layer")
        dest.mkdir()
        with self.blobs[digest_hex(blob)].open("rb") as raw:
            stats = unpack_layer(raw, dest, label=label, expected_diff_id=expected_diff_id)
        hex_digest = digest_hex(stats.diff_id)
        if hex_digest not in self.layers:
            self.layers[hex_digest] = (dest, LayerInfo(stats.size, blob))
        return stats.diff_id

    def add_config(self, data: bytes) -> str:
        hex_digest = hashlib.sha256(data).hexdigest()
        self.configs[hex_digest] = data
        return "sha256:" + hex_digest

    def commit(self) -> None:
        """Move everything into place; what is already there is kept (same digest, same bytes)."""
        layout = self.layout
        for hex_digest, path in self.blobs.items():
            if not layout.blob(hex_digest).exists():
                os.replace(path, layout.blob(hex_digest))
        for hex_digest, (path, info) in self.layers.items():
            if layout.read_layer(hex_digest) is not None:
                continue
            record = {"size": info.size, "blob": info.blob}
            write_atomic(layout.layer_meta(hex_digest), json.dumps(record).encode())
            shutil.rmtree(layout.layer_dir(hex_digest), ignore_errors=True)  # a crash's leftover
            os.rename(path, layout.layer_dir(hex_digest))
        for hex_digest, data in self.configs.items():
            if not layout.blob(hex_digest).exists():
                write_atomic(layout.blob(hex_digest), data)
            write_atomic(layout.image_config(hex_digest), data)

    def discard(self) -> None:
        shutil.rmtree(self.dir, ignore_errors=True)

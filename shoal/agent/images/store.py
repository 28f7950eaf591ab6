"""The local, content-addressed image store of one host: `ImageService` for the API server and
`resolve` for the executor.

Built by the daemon (shoal/daemon/main.py) over `D/images`; the API server calls list, inspect,
import_rootfs, load, tag and remove through shoal.api.services.ImageService; the executor
(agent/exec/crun.py) calls `resolve` to get the unpacked layer directories of a task's image.
Files on disk are described in agent/images/layout.py.

Concurrency (one asyncio process): `load` and `import_rootfs` are serialised by an asyncio lock
and do their disk work in a thread; everything that reads or changes the tag table and the image
index, including the commit of a load that runs in that thread, holds one threading lock, so the
synchronous methods always see a whole image or none.
"""

from __future__ import annotations

import asyncio
import builtins
import hashlib
import json
import logging
import os
import shutil
import tempfile
import threading
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

from shoal.agent.exec.protocol import ImageNotFound
from shoal.agent.images import config as cfg
from shoal.agent.images.archive import LoadedImage, read_archive
from shoal.agent.images.layout import LayerInfo, Layout, Staging, digest_hex, write_atomic
from shoal.agent.images.model import ResolvedImage
from shoal.agent.images.refs import id_prefix, is_full_id, normalize, try_normalize
from shoal.api.clock import Clock, SystemClock
from shoal.api.errors import Conflict, InvalidArgument, NotFound
from shoal.api.services import ImageSummary

log = logging.getLogger(__name__)


class ImageStore:
    """Images under `root`; see the module docstring for who calls what."""

    def __init__(self, root: Path, *, clock: Clock | None = None) -> None:
        self._layout = Layout(root)
        self._layout.prepare()
        self._clock: Clock = clock or SystemClock()
        self._op_lock = asyncio.Lock()
        self._mutex = threading.RLock()
        self._images: dict[str, dict[str, Any]] = {}  # config hex -> parsed config
        self._layers: dict[str, LayerInfo] = {}  # diff-id hex -> record
        self._repos: dict[str, str] = {}  # "name:tag" -> "sha256:<config hex>"
        self._read_index()

    # -- reading ----------------------------------------------------------------------------

    def list(self) -> builtins.list[ImageSummary]:
        """All images, newest first (untagged ones too, with RepoTags [])."""
        with self._mutex:
            out = [
                ImageSummary(id="sha256:" + hex_id, repo_tags=self._tags_of(hex_id),
                             created=cfg.created_seconds(config), size=self._size(config),
                             labels=cfg.image_config(config).labels)
                for hex_id, config in self._images.items()
            ]
        return sorted(out, key=lambda s: (-s.created, s.id))

    def inspect(self, ref: str) -> dict[str, object]:
        with self._mutex:
            hex_id = self._find(ref)
            config = self._images[hex_id]
            return cfg.inspect_view("sha256:" + hex_id, self._tags_of(hex_id), config, self._size(config))

    def resolve(self, ref: str) -> ResolvedImage:
        """The unpacked layers (lowest first) and run config of `ref`; ImageNotFound if absent."""
        with self._mutex:
            hex_id = self._lookup(ref)
            if hex_id is None:
                raise ImageNotFound(ref)
            config = self._images[hex_id]
            layers = [self._layout.layer_dir(digest_hex(d)) for d in cfg.diff_ids(config)]
            return ResolvedImage(image_id="sha256:" + hex_id, layers=layers, config=cfg.image_config(config))

    # -- adding -----------------------------------------------------------------------------

    async def import_rootfs(self, data: AsyncIterator[bytes], ref: str, changes: builtins.list[str]) -> str:
        """`docker import`: a one-layer image from a (gzip) rootfs tar; returns "sha256:<id>"."""
        name = normalize(ref) if ref else None
        cfg.apply_changes(changes)  # refuse a bad --change before reading the upload
        async with self._op_lock:
            staging = Staging(self._layout)
            try:
                spool = staging.dir / "upload"
                hex_digest = await _spool(data, spool)
                return await asyncio.to_thread(self._import_staged, staging, spool, hex_digest, name, changes)
            finally:
                await asyncio.to_thread(staging.discard)

    def _import_staged(self, staging: Staging, spool: Path, hex_digest: str, name: str | None,
                       changes: builtins.list[str]) -> str:
        blob = staging.adopt_blob(spool, hex_digest, "imported rootfs")
        diff_id = staging.add_layer(blob, "imported rootfs")
        image_id = staging.add_config(cfg.import_config(diff_id, changes, self._clock.now()))
        self._commit(staging, [LoadedImage(image_id, [name] if name else [])])
        return image_id

    async def load(self, data: AsyncIterator[bytes]) -> builtins.list[str]:
        """A docker-save or OCI-layout archive (plain or gzip tar). Returns the tags loaded, and
        the ID of each image loaded without a tag ("sha256:...", as `docker load` prints)."""
        async with self._op_lock:
            staging = Staging(self._layout)
            try:
                spool = staging.dir / "upload"
                await _spool(data, spool)
                return await asyncio.to_thread(self._load_staged, staging, spool)
            finally:
                await asyncio.to_thread(staging.discard)

    def _load_staged(self, staging: Staging, spool: Path) -> builtins.list[str]:
        loaded = read_archive(spool, staging)
        self._commit(staging, loaded)
        names: builtins.list[str] = []
        for image in loaded:
            for name in image.tags or [image.image_id]:
                if name not in names:
                    names.append(name)
        return names

    def _commit(self, staging: Staging, images: builtins.list[LoadedImage]) -> None:
        """Make staged images visible and point their tags at them (a tag that named another
        image moves, leaving that one untagged, as `docker load` does)."""
        with self._mutex:
            staging.commit()
            for hex_digest in staging.layers:
                info = self._layout.read_layer(hex_digest)
                if info is not None:
                    self._layers[hex_digest] = info
            for hex_digest, data in staging.configs.items():
                self._images[hex_digest] = cfg.parse_config(data, f"image sha256:{hex_digest}")
            for image in images:
                for tag in image.tags:
                    self._repos[tag] = image.image_id
            self._save_repos()

    # -- tags and removal -------------------------------------------------------------------

    def tag(self, source: str, ref: str) -> None:
        name = normalize(ref)
        if is_full_id(name.rpartition(":")[0]):
            raise InvalidArgument(f"refusing to create an ambiguous tag using a 64-hex name: {ref!r}")
        with self._mutex:
            hex_id = self._find(source)
            self._repos[name] = "sha256:" + hex_id
            self._save_repos()

    def remove(self, ref: str, force: bool) -> builtins.list[dict[str, str]]:
        """By tag: untag, and delete the image if that was its last tag. By ID: untag all and
        delete; an image with several tags needs `force` (Conflict otherwise, as in Docker)."""
        with self._mutex:
            hex_id = self._find(ref)
            image_id = "sha256:" + hex_id
            name = try_normalize(ref)
            by_tag = name is not None and self._repos.get(name) == image_id
            tags = [name] if by_tag and name else self._tags_of(hex_id)
            if not by_tag and len(tags) > 1 and not force:
                raise Conflict(f"conflict: unable to delete {hex_id[:12]} (must be forced) - "
                               "image is referenced in multiple repositories")
            result = [{"Untagged": tag} for tag in tags]
            for tag in tags:
                del self._repos[tag]
            self._save_repos()
            if not self._tags_of(hex_id):
                self._delete_image(hex_id)
                result.append({"Deleted": image_id})
            return result

    def _delete_image(self, hex_id: str) -> None:
        """Forget the image, then delete its config and the layers no other image uses. The
        config goes first: a crash part-way leaves unused layers, never a broken image."""
        config = self._images.pop(hex_id)
        self._layout.image_config(hex_id).unlink(missing_ok=True)
        self._layout.blob(hex_id).unlink(missing_ok=True)
        in_use = {d for other in self._images.values() for d in cfg.diff_ids(other)}
        for diff_id in dict.fromkeys(cfg.diff_ids(config)):
            if diff_id not in in_use:
                self._delete_layer(digest_hex(diff_id))

    def _delete_layer(self, hex_digest: str) -> None:
        info = self._layers.pop(hex_digest, None)
        # Renamed away first, so a half-deleted directory is never taken for a layer.
        doomed = Path(tempfile.mkdtemp(dir=self._layout.tmp, prefix="delete-"))
        layer_dir = self._layout.layer_dir(hex_digest)
        if layer_dir.exists():
            os.rename(layer_dir, doomed / "layer")
        self._layout.layer_meta(hex_digest).unlink(missing_ok=True)
        if info is not None and info.blob:
            self._layout.blob(digest_hex(info.blob)).unlink(missing_ok=True)
        shutil.rmtree(doomed, ignore_errors=True)

    # -- lookups and the index --------------------------------------------------------------

    def _lookup(self, ref: str) -> str | None:
        """The config hex `ref` names: a tag first, then a unique image ID prefix (as Docker)."""
        name = try_normalize(ref)
        if name is not None and name in self._repos:
            return digest_hex(self._repos[name])
        prefix = id_prefix(ref)
        if prefix is None:
            return None
        matches = [hex_id for hex_id in self._images if hex_id.startswith(prefix)]
        return matches[0] if len(matches) == 1 else None

    def _find(self, ref: str) -> str:
        hex_id = self._lookup(ref)
        if hex_id is None:
            raise NotFound(f"No such image: {ref}")
        return hex_id

    def _tags_of(self, hex_id: str) -> builtins.list[str]:
        image_id = "sha256:" + hex_id
        return sorted(tag for tag, target in self._repos.items() if target == image_id)

    def _size(self, config: dict[str, Any]) -> int:
        return sum(self._layers[digest_hex(d)].size for d in cfg.diff_ids(config)
                   if digest_hex(d) in self._layers)

    def _save_repos(self) -> None:
        data = json.dumps(dict(sorted(self._repos.items())), indent=1).encode()
        write_atomic(self._layout.repositories, data)

    def _read_index(self) -> None:
        """Load images whose layers are all present, and the tags that point at them."""
        for path in sorted(self._layout.images.glob("*.json")):
            hex_id = path.stem
            try:
                config = cfg.parse_config(path.read_bytes(), str(path))
                layers = {digest_hex(d): self._layout.read_layer(digest_hex(d)) for d in cfg.diff_ids(config)}
            except (OSError, InvalidArgument) as e:
                log.warning("ignoring unreadable image %s: %s", hex_id, e)
                continue
            if any(info is None for info in layers.values()):
                log.warning("ignoring image %s: a layer is missing", hex_id)
                continue
            self._layers.update({h: info for h, info in layers.items() if info is not None})
            self._images[hex_id] = config
        try:
            repos = json.loads(self._layout.repositories.read_bytes())
        except FileNotFoundError:
            return
        except (OSError, ValueError) as e:
            log.warning("ignoring unreadable %s: %s", self._layout.repositories, e)
            return
        for tag, image_id in repos.items() if isinstance(repos, dict) else []:
            if isinstance(image_id, str) and image_id.removeprefix("sha256:") in self._images:
                self._repos[tag] = image_id


async def _spool(data: AsyncIterator[bytes], path: Path) -> str:
    """Write the upload to `path` (never all of it in memory); returns its sha256 hex."""
    digest = hashlib.sha256()
    with path.open("wb") as out:
        async for chunk in data:
            digest.update(chunk)
            out.write(chunk)
    return digest.hexdigest()

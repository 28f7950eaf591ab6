"""`--load-image`: load image archives at daemon start unless their tags are already present.

Called once by shoal.daemon.main before the API opens, so that tests and the demo can rely on
`busybox:latest` existing. The tags an archive holds are read from its docker-save
`manifest.json` (or OCI `index.json` ref annotations) without unpacking it.
"""

from __future__ import annotations

import json
import logging
import tarfile
from collections.abc import AsyncIterator
from pathlib import Path

from shoal.api.services import ImageService

log = logging.getLogger(__name__)

_CHUNK = 1024 * 1024


def archive_tags(path: Path) -> list[str]:
    """Tags named inside an image archive; [] when it names none (then it is always loaded)."""
    try:
        with tarfile.open(path) as tar:
            for name in ("manifest.json", "index.json"):
                try:
                    member = tar.extractfile(name)
                except KeyError:
                    continue
                if member is not None:
                    return _tags_from(name, json.load(member))
    except (OSError, tarfile.TarError, ValueError):
        return []
    return []


def _tags_from(name: str, data: object) -> list[str]:
    if name == "manifest.json" and isinstance(data, list):
        return [t for entry in data if isinstance(entry, dict) for t in entry.get("RepoTags") or []]
    if isinstance(data, dict):
        manifests = [m for m in data.get("manifests", []) if isinstance(m, dict)]
        refs = [m.get("annotations", {}).get("io.containerd.image.name", "") for m in manifests]
        return [r for r in refs if r]
    return []


async def _chunks(path: Path) -> AsyncIterator[bytes]:
    with open(path, "rb") as f:
        while chunk := f.read(_CHUNK):
            yield chunk


async def preload_images(images: ImageService, archives: list[Path]) -> None:
    present = {tag for summary in images.list() for tag in summary.repo_tags}
    for archive in archives:
        tags = archive_tags(archive)
        if tags and all(t in present for t in tags):
            log.info("images %s already present; not loading %s", ", ".join(tags), archive)
            continue
        loaded = await images.load(_chunks(archive))
        log.info("loaded %s from %s", ", ".join(loaded), archive)

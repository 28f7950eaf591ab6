"""What the executor gets from the image store for one image reference."""

from __future__ import annotations

from pathlib import Path

import msgspec


class ImageConfig(msgspec.Struct, frozen=True, kw_only=True):
    """The runnable parts of an OCI/Docker image config."""

    entrypoint: list[str] | None = None
    cmd: list[str] | None = None
    env: list[str] | None = None
    working_dir: str = ""
    user: str = ""
    labels: dict[str, str] | None = None


class ResolvedImage(msgspec.Struct, frozen=True, kw_only=True):
    image_id: str  # "sha256:<hex>" of the config
    layers: list[Path]  # unpacked layer directories, lowest first (overlay lowerdir order is reversed)
    config: ImageConfig

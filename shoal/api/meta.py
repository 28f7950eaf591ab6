"""The base of every wire type, and the metadata every stored object carries.

`shoal.api.types` builds Docker's swarm types on these (and re-exports them).
"""

from __future__ import annotations

import datetime as dt

import msgspec
from msgspec import field

EPOCH = dt.datetime(1970, 1, 1, tzinfo=dt.UTC)


class Base(msgspec.Struct, rename="pascal", omit_defaults=True, frozen=True, kw_only=True):
    """Common configuration of every wire type."""


class Version(Base, frozen=True):
    index: int = 0


class Meta(Base, frozen=True):
    """Fields every stored object carries; the store writes `version`, `created_at`, `updated_at`."""

    id: str = field(name="ID", default="")
    version: Version = Version()
    created_at: dt.datetime = EPOCH
    updated_at: dt.datetime = EPOCH

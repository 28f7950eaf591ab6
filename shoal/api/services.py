"""Narrow protocols the API server uses to reach what it does not own.

The daemon hands in objects that satisfy these; the API server never imports the agent or the
manager. Each method raises `shoal.api.errors` exceptions for the caller's mistakes.
"""

from __future__ import annotations

import builtins
import datetime as dt
from collections.abc import AsyncIterator
from typing import Protocol

import msgspec


class ImageSummary(msgspec.Struct, frozen=True, kw_only=True):
    """One image as `GET /images/json` lists it (Docker's field names, see `to_wire`)."""

    id: str  # "sha256:<hex>" of the config
    repo_tags: list[str]
    created: int  # unix seconds
    size: int
    labels: dict[str, str] | None = None

    def to_wire(self) -> dict[str, object]:
        return {
            "Id": self.id, "RepoTags": self.repo_tags, "RepoDigests": [], "Created": self.created,
            "Size": self.size, "VirtualSize": self.size, "SharedSize": -1, "ParentId": "",
            "Labels": self.labels, "Containers": -1,
        }


class ImageService(Protocol):
    """The local image store of this host (agent/images)."""

    def list(self) -> list[ImageSummary]: ...

    def inspect(self, ref: str) -> dict[str, object]:
        """Docker's ImageInspect shape; NotFound('No such image: ref')."""
        ...

    async def import_rootfs(self, data: AsyncIterator[bytes], ref: str, changes: builtins.list[str]) -> str:
        """Like `docker import`: a rootfs tarball (optionally gzip) -> image; returns "sha256:<id>"."""
        ...

    async def load(self, data: AsyncIterator[bytes]) -> builtins.list[str]:
        """A docker-save or OCI-layout archive; returns the names loaded ("busybox:latest")."""
        ...

    def tag(self, source: str, ref: str) -> None: ...

    def remove(self, ref: str, force: bool) -> builtins.list[dict[str, str]]:
        """Docker's delete response: [{"Untagged": ...}, {"Deleted": ...}]."""
        ...


class LogLine(msgspec.Struct, frozen=True):
    timestamp: dt.datetime
    stream: int  # 1 stdout, 2 stderr
    message: bytes  # one line, without its newline


class LogSource(Protocol):
    """The log lines of a task, read where the task runs."""

    def read(self, task_id: str, *, tail: int | None, since: dt.datetime | None,
             follow: bool) -> AsyncIterator[LogLine]:
        """Lines oldest first; with follow, keeps yielding until the caller stops iterating."""
        ...


class LocalNode(msgspec.Struct, frozen=True, kw_only=True):
    """This host's membership as the daemon knows it (a worker's store holds no cluster objects)."""

    node_id: str
    role: str  # manager | worker
    addr: str = ""  # the address this node advertises (host only)
    managers: builtins.list[str] = []  # manager cluster addresses ("ip:port") this node knows


class SwarmControl(Protocol):
    """Joining and leaving: the daemon starts and stops the manager and agent."""

    async def init(self, advertise_addr: str, listen_addr: str, spec_overrides: dict[str, object]) -> str:
        """Make this host a one-node swarm; returns the node ID. Unavailable if already in one."""
        ...

    async def leave(self, force: bool) -> None: ...

    def local_node_id(self) -> str | None: ...

    async def join(self, remote_addrs: builtins.list[str], token: str, advertise_addr: str,
                   listen_addr: str) -> None:
        """Join the swarm of the manager at one of `remote_addrs` ("host:port") as a worker.
        Unavailable(ALREADY_IN_SWARM) when in one; InvalidArgument or Unavailable with the
        manager's or the connection's message when refused (nothing changes then)."""
        ...

    def local_node(self) -> LocalNode | None:
        """This host's node and role, or None when it is not in a swarm."""
        ...

    async def rotate_join_tokens(self, *, worker: bool, manager: bool) -> None:
        """New join tokens (bound to the cluster's root CA) for the roles asked; manager only."""
        ...

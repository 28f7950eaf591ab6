"""The executor: everything the task runner needs from the host, behind one narrow protocol.

The task runner (agent/runner.py) advances a task one step per call and calls these methods;
the real executor (agent/exec/crun.py) does images, rootfs, network, cgroups and the OCI runtime;
a fake in shoal.testing lets the runner's unit tests run without root. Modeled on swarmkit's
agent/exec/controller.go.

Errors: raise `ExecError` (or a subclass). `temporary=True` means retry later; otherwise a failure
before STARTING makes the task REJECTED and from STARTING on FAILED, with `str(error)` as Status.Err.
"""

from __future__ import annotations

from typing import Protocol

import msgspec

from shoal.api.types import NodeResources, Task


class ExecError(Exception):
    def __init__(self, message: str, *, temporary: bool = False) -> None:
        super().__init__(message)
        self.temporary = temporary


class ImageNotFound(ExecError):
    """`No such image: <ref>` (the message Swarm shows in `service ps`)."""

    def __init__(self, ref: str) -> None:
        super().__init__(f"No such image: {ref}")


class ContainerInfo(msgspec.Struct, frozen=True, kw_only=True):
    """What the host knows of a task's container."""

    task_id: str
    container_id: str
    pid: int  # 0 when not running
    running: bool
    address: str = ""  # the task's address on the host bridge, "" if none


class Executor(Protocol):
    def capacity(self) -> NodeResources:
        """What this host advertises (the daemon's --cpus/--memory or the machine's)."""
        ...

    async def prepare(self, task: Task) -> None:
        """Resolve the image, make rootfs, network namespace and bundle. Idempotent."""
        ...

    async def start(self, task: Task) -> ContainerInfo:
        """Start the prepared container (detached); returns its PID."""
        ...

    async def wait(self, task_id: str) -> int | None:
        """Wait until the container exits; its exit code, or None if it cannot be known
        (a container adopted after a restart of shoald that then exited)."""
        ...

    async def shutdown(self, task: Task) -> int | None:
        """Stop signal (default SIGTERM), the stop grace period, then SIGKILL; the exit code."""
        ...

    async def remove(self, task_id: str) -> None:
        """Delete the container, unmount the rootfs, remove netns, cgroup and bundle. Idempotent;
        logs are kept until `forget_logs`."""
        ...

    async def forget_logs(self, task_id: str) -> None: ...

    async def inspect(self, task_id: str) -> ContainerInfo | None:
        """The container if the host has one for this task (running or stopped), else None."""
        ...

    def known_task_ids(self) -> list[str]:
        """Tasks that have containers or bundles on this host (for adoption after a restart)."""
        ...

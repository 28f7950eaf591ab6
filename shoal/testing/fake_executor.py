"""An in-memory `Executor` (shoal.agent.exec.protocol) for fast unit tests of the agent.

Used by tests/unit (the task runner and the agent session); integration tests never import it.
Nothing touches the host: a "container" is a `FakeContainer` record in a `FakeHost`.

The `FakeHost` plays the part of the machine: it outlives a `FakeExecutor`, so a test can build a
second executor (and a second Agent) on the same host to mimic a restart of shoald while its
containers kept running. As the real executor, a `FakeExecutor` cannot know the exit code of a
container it did not start itself: `wait` returns None for such adopted containers.

Knobs (all public attributes, set them before or during a test):
  missing_images  image refs for which `prepare` raises ImageNotFound
  exit_codes      image ref -> exit code: containers of that image exit as soon as they start
  fail(method, error, times)  make the next `times` calls of `method` raise `error`
  exit(task_id, code)         make a running container exit with `code`
  calls           every call made, as (method, task_id), for assertions
"""

from __future__ import annotations

import asyncio
import dataclasses
from collections import Counter

from shoal.agent.exec.protocol import ContainerInfo, ExecError, ImageNotFound
from shoal.api.types import NodeResources, Task

SIGTERM_EXIT_CODE = 143  # 128 + SIGTERM: what a shell-less process stopped by `shutdown` reports


@dataclasses.dataclass
class FakeContainer:
    """A task's container on the fake host. No asyncio objects: it must survive event loops."""

    task_id: str
    container_id: str
    image: str
    pid: int = 0
    started: bool = False
    running: bool = False
    exit_code: int | None = None


@dataclasses.dataclass
class FakeHost:
    """The machine: its containers (prepared or started), PIDs handed out, starts per task."""

    containers: dict[str, FakeContainer] = dataclasses.field(default_factory=dict)
    starts: Counter[str] = dataclasses.field(default_factory=Counter)
    next_pid: int = 1000


class FakeExecutor:
    """Implements shoal.agent.exec.protocol.Executor in memory."""

    def __init__(self, *, host: FakeHost | None = None,
                 capacity: NodeResources | None = None) -> None:
        self.host = host if host is not None else FakeHost()
        self.missing_images: set[str] = set()
        self.exit_codes: dict[str, int] = {}
        self.calls: list[tuple[str, str]] = []
        self._capacity = capacity or NodeResources(nano_cpus=4_000_000_000, memory_bytes=8 << 30)
        self._failures: dict[str, list[ExecError]] = {}
        self._started_here: set[str] = set()
        # Exit events are per instance (and so per event loop); the host keeps plain data only.
        self._exited: dict[str, asyncio.Event] = {}

    # ------------------------------------------------------------------------------- test knobs
    def fail(self, method: str, error: ExecError, *, times: int = 1) -> None:
        """The next `times` calls of `method` (e.g. "prepare") raise `error`."""
        self._failures.setdefault(method, []).extend([error] * times)

    def exit(self, task_id: str, code: int) -> None:
        """The container of `task_id` exits with `code` (as if its process ended)."""
        c = self.host.containers[task_id]
        c.running, c.pid, c.exit_code = False, 0, code
        self._event(task_id).set()

    def vanish(self, task_id: str) -> None:
        """The container disappears without a trace (someone ran `crun delete -f`)."""
        self.host.containers.pop(task_id, None)
        self._event(task_id).set()

    def container(self, task_id: str) -> FakeContainer | None:
        return self.host.containers.get(task_id)

    # -------------------------------------------------------------------------------- Executor
    def capacity(self) -> NodeResources:
        return self._capacity

    async def prepare(self, task: Task) -> None:
        self._record("prepare", task.id)
        image = task.spec.container_spec.image if task.spec.container_spec else ""
        if image in self.missing_images:
            raise ImageNotFound(image)
        self.host.containers.setdefault(
            task.id, FakeContainer(task_id=task.id, container_id=f"c-{task.id}", image=image))

    async def start(self, task: Task) -> ContainerInfo:
        self._record("start", task.id)
        c = self.host.containers.get(task.id)
        if c is None:
            raise ExecError(f"task {task.id} is not prepared")
        if c.started:
            raise ExecError(f"container {c.container_id} already started")
        self.host.starts[task.id] += 1
        self.host.next_pid += 1
        c.started, c.running, c.pid = True, True, self.host.next_pid
        self._started_here.add(task.id)
        info = self._info(c)
        if c.image in self.exit_codes:
            self.exit(task.id, self.exit_codes[c.image])
        return info

    async def wait(self, task_id: str) -> int | None:
        self._record("wait", task_id)
        c = self.host.containers.get(task_id)
        if c is not None and c.running:
            await self._event(task_id).wait()
            c = self.host.containers.get(task_id)
        if c is None or task_id not in self._started_here:
            return None  # adopted (or vanished): the real executor cannot know the code either
        return c.exit_code

    async def shutdown(self, task: Task) -> int | None:
        self._record("shutdown", task.id)
        c = self.host.containers.get(task.id)
        if c is None:
            return None
        if c.running:
            self.exit(task.id, SIGTERM_EXIT_CODE)
        return c.exit_code

    async def remove(self, task_id: str) -> None:
        self._record("remove", task_id)
        self.host.containers.pop(task_id, None)

    async def forget_logs(self, task_id: str) -> None:
        self._record("forget_logs", task_id)

    async def inspect(self, task_id: str) -> ContainerInfo | None:
        self._record("inspect", task_id)
        c = self.host.containers.get(task_id)
        return self._info(c) if c is not None and c.started else None

    def known_task_ids(self) -> list[str]:
        return list(self.host.containers)

    # --------------------------------------------------------------------------------- helpers
    def _record(self, method: str, task_id: str) -> None:
        self.calls.append((method, task_id))
        pending = self._failures.get(method)
        if pending:
            raise pending.pop(0)

    def _event(self, task_id: str) -> asyncio.Event:
        return self._exited.setdefault(task_id, asyncio.Event())

    @staticmethod
    def _info(c: FakeContainer) -> ContainerInfo:
        return ContainerInfo(task_id=c.task_id, container_id=c.container_id, pid=c.pid, running=c.running)

    def count(self, method: str, task_id: str) -> int:
        """How many times `method` was called for `task_id`."""
        return self.calls.count((method, task_id))

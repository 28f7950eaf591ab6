"""The task runner: advances one task one state per call (DESIGN.md §5.5; swarmkit's
agent/exec/controller.go `Do`).

agent/agent.py makes one `TaskRunner` per task assigned to the node and runs `drive(runner, ...)`
in one asyncio task per runner. `TaskRunner.step` does at most one executor action and returns
an `Outcome` telling the driver what to wait for; the driver never busy-loops: it sleeps until
the assignment changes (`update`), until the container exits, or until a retry delay passes.

The status is the agent's (DESIGN.md §3): the manager only moves `desired_state`.

| status                     | when                  | executor call | next status (message)           |
|----------------------------|-----------------------|---------------|---------------------------------|
| not terminal               | desired >= SHUTDOWN   | shutdown (1)  | SHUTDOWN ("shutdown")           |
| STARTING/RUNNING recovered | first step (2)        | inspect       | RUNNING same PID / FAILED       |
| NEW, PENDING, ASSIGNED     | desired > status      | -             | ACCEPTED ("accepted")           |
| ACCEPTED                   | desired > ACCEPTED    | -             | PREPARING ("preparing")         |
| PREPARING                  | always                | prepare       | READY ("prepared")              |
| READY                      | desired >= RUNNING    | -             | STARTING ("starting")           |
| STARTING                   | always                | start         | RUNNING ("started"), ID, PID    |
| RUNNING                    | the container exits   | wait          | COMPLETE ("finished") / FAILED  |
| terminal                   | container not removed | remove        | unchanged                       |
| pause states above         | desired <= status     | -             | unchanged: PAUSED until update  |

(1) only if a container may exist (status >= STARTING). (2) a runner built from a persisted or
reported status of STARTING/RUNNING (a shoald restart): the container is adopted, never restarted.

Errors from the executor: `ExecError(temporary=True)` keeps the state, sets Status.Err and asks
for a retry with exponential backoff; any other error is fatal: REJECTED before STARTING, FAILED
from STARTING on, with Err = str(error) (Swarm keeps the message of the state it failed in).
"""

from __future__ import annotations

import asyncio
import enum
import logging
from collections.abc import Awaitable, Callable
from typing import Any

import msgspec

from shoal.agent.exec.protocol import ContainerInfo, ExecError, Executor
from shoal.api.clock import Clock
from shoal.api.states import TaskState
from shoal.api.types import ContainerStatus, Task, TaskStatus

log = logging.getLogger("shoal.agent")

RETRY_INITIAL_S = 0.2
RETRY_MAX_S = 10.0

ERR_VANISHED = "container vanished while shoald was down"
ERR_EXITED_WHILE_DOWN = "container exited while shoald was down (exit code unknown)"
ERR_EXIT_UNKNOWN = "task: exit code unknown (container adopted after a shoald restart)"

# States the runner waits in until the manager raises the desired state past them.
_PAUSE_NEXT: dict[TaskState, tuple[TaskState, str]] = {
    TaskState.NEW: (TaskState.ACCEPTED, "accepted"),
    TaskState.PENDING: (TaskState.ACCEPTED, "accepted"),
    TaskState.ASSIGNED: (TaskState.ACCEPTED, "accepted"),
    TaskState.ACCEPTED: (TaskState.PREPARING, "preparing"),
    TaskState.READY: (TaskState.STARTING, "starting"),
}


class Outcome(enum.Enum):
    """What the driver does after a step."""

    PROGRESS = "progress"  # something happened: step again at once
    PAUSED = "paused"  # nothing to do until the assignment changes
    RETRY = "retry"  # a temporary error: step again after `retry_delay_s` (or on a change)
    DONE = "done"  # terminal and cleaned up: nothing more, ever


def exit_error(code: int) -> str:
    """Swarm's Status.Err for a container that exited non-zero."""
    return f"task: non-zero exit ({code})"


class TaskRunner:
    """One task's state machine (see the module table). Not thread-safe; one driver per runner."""

    def __init__(self, task: Task, executor: Executor, clock: Clock, *,
                 status: TaskStatus | None = None) -> None:
        self.task = task
        self.status = status if status is not None else task.status
        self._executor = executor
        self._clock = clock
        self._changed = asyncio.Event()
        self._exit_watch: asyncio.Future[int | None] | None = None
        self._retries = 0
        self.removed = False
        self._settled = asyncio.Event()
        # A status of STARTING or later means a container may exist that this process did not
        # start: check it before anything else, and never call `start` for it.
        self._recovered = TaskState.STARTING <= self.status.state < TaskState.COMPLETE
        self._may_have_container = self.status.state >= TaskState.STARTING

    # --------------------------------------------------------------------------------- public
    @property
    def task_id(self) -> str:
        return self.task.id

    @property
    def retry_delay_s(self) -> float:
        """Backoff before the next try after `retries` temporary errors in a row."""
        return min(RETRY_MAX_S, RETRY_INITIAL_S * 2.0 ** max(0, self._retries - 1))

    def update(self, task: Task) -> None:
        """The manager's new copy of the task (desired state, spec); wakes the driver."""
        self.task = task
        self._changed.set()

    async def wait_changed(self, timeout_s: float | None = None) -> None:
        """Until `update` is called (or since the last step began), or `timeout_s` passes."""
        if timeout_s is None:
            await self._changed.wait()
            return
        await first_of(self._changed.wait(), self._clock.sleep(timeout_s))

    async def wait_settled(self) -> None:
        """Until the task is terminal and its container removed."""
        await self._settled.wait()

    def close(self) -> None:
        """Stop watching the container (the runner is dropped; the container is left as is)."""
        if self._exit_watch is not None:
            self._exit_watch.cancel()

    async def step(self) -> Outcome:
        """Advance at most one state (or do one executor action); see the module table."""
        self._changed.clear()  # an update from here on wakes the next wait_changed
        try:
            outcome = await self._step()
        except asyncio.CancelledError:
            raise
        except ExecError as e:
            outcome = self._error(e)
        except Exception as e:  # an executor bug must end in a reason on the task, not a dead driver
            log.exception("task %s: unexpected executor error", self.task_id)
            outcome = self._error(ExecError(f"{type(e).__name__}: {e}"))
        if outcome is not Outcome.RETRY:
            self._retries = 0
        return outcome

    # -------------------------------------------------------------------------------- the steps
    async def _step(self) -> Outcome:
        state, desired = self.status.state, self.task.desired_state
        if state.terminal:
            return await self._remove()
        if desired >= TaskState.SHUTDOWN:
            return await self._shutdown()
        if self._recovered:
            return await self._recover()
        if state is TaskState.PREPARING:
            await self._executor.prepare(self.task)
            return self._transition(TaskState.READY, "prepared")
        if state is TaskState.STARTING:
            self._may_have_container = True  # before the call: it may start even if it raises
            info = await self._executor.start(self.task)
            return self._transition(TaskState.RUNNING, "started", container=_container_status(info))
        if state is TaskState.RUNNING:
            return await self._wait_exit()
        nxt = _PAUSE_NEXT.get(state)
        if nxt is None or desired <= state:
            return Outcome.PAUSED
        return self._transition(*nxt)

    async def _remove(self) -> Outcome:
        if self.removed:
            return Outcome.DONE
        await self._executor.remove(self.task_id)
        self.removed = True
        self._settled.set()
        self.close()
        return Outcome.PROGRESS

    async def _shutdown(self) -> Outcome:
        code: int | None = None
        if self._may_have_container:
            code = await self._executor.shutdown(self.task)
        container = self.status.container_status
        if container is not None or code is not None:
            container = msgspec.structs.replace(
                container or ContainerStatus(), pid=0, exit_code=code if code is not None else 0)
        return self._transition(TaskState.SHUTDOWN, "shutdown", container=container)

    async def _recover(self) -> Outcome:
        info = await self._executor.inspect(self.task_id)
        self._recovered = False
        if info is None:
            return self._fail(ERR_VANISHED)
        if not info.running:
            return self._fail(ERR_EXITED_WHILE_DOWN)
        log.info("task %s: adopted running container %s (pid %d)", self.task_id, info.container_id, info.pid)
        container = _container_status(info)
        if self.status.state is TaskState.RUNNING and self.status.container_status == container:
            return Outcome.PROGRESS  # unchanged: keep the status (and its timestamp) as it was
        return self._transition(TaskState.RUNNING, "started", container=container)

    async def _wait_exit(self) -> Outcome:
        """Wait for the container to exit, or for the manager to ask for a shutdown."""
        if self._exit_watch is None:
            self._exit_watch = asyncio.ensure_future(self._executor.wait(self.task_id))
        while not self._exit_watch.done():
            if self.task.desired_state >= TaskState.SHUTDOWN:
                return Outcome.PROGRESS  # the next step shuts it down
            # shield: a cancelled step (the agent stopping) must not cancel the executor's wait.
            await first_of(asyncio.shield(self._exit_watch), self._changed.wait())
            self._changed.clear()
        watch = self._exit_watch
        if watch.exception() is not None:
            self._exit_watch = None  # a retry must ask the executor again
        code = watch.result()  # raises the executor's error, if any
        container = self.status.container_status or ContainerStatus()
        if code is None:
            return self._fail(ERR_EXIT_UNKNOWN, container=msgspec.structs.replace(container, pid=0))
        container = msgspec.structs.replace(container, pid=0, exit_code=code)
        if code == 0:
            return self._transition(TaskState.COMPLETE, "finished", container=container)
        return self._fail(exit_error(code), container=container)

    # ------------------------------------------------------------------------------ status edits
    def _transition(self, state: TaskState, message: str, *,
                    container: ContainerStatus | None = None) -> Outcome:
        if state < self.status.state:
            raise AssertionError(f"task {self.task_id}: {self.status.state} -> {state} moves back")
        self.status = TaskStatus(
            timestamp=self._clock.now(), state=state, message=message, err="",
            container_status=container or self.status.container_status,
            port_status=self.status.port_status)
        log.debug("task %s: %s (%s)", self.task_id, state.value, message)
        return Outcome.PROGRESS

    def _fail(self, err: str, *, state: TaskState = TaskState.FAILED,
              container: ContainerStatus | None = None) -> Outcome:
        """A terminal failure: keeps the message of the state it failed in, as Swarm does."""
        log.warning("task %s: %s: %s", self.task_id, state.value, err)
        self.status = msgspec.structs.replace(
            self.status, timestamp=self._clock.now(), state=state, err=err,
            container_status=container or self.status.container_status)
        return Outcome.PROGRESS

    def _error(self, error: ExecError) -> Outcome:
        if error.temporary:
            self._retries += 1
            log.info("task %s: temporary error in %s (try %d): %s", self.task_id,
                     self.status.state.value, self._retries, error)
            if self.status.err != str(error):  # Swarm reports the error while it retries
                self.status = msgspec.structs.replace(
                    self.status, timestamp=self._clock.now(), err=str(error))
            return Outcome.RETRY
        if self.status.state.terminal:  # removing a finished task failed: its status stays
            log.error("task %s: remove failed: %s", self.task_id, error)
            self._retries += 1
            return Outcome.RETRY
        rejected = self.status.state < TaskState.STARTING
        return self._fail(str(error), state=TaskState.REJECTED if rejected else TaskState.FAILED)


def _container_status(info: ContainerInfo) -> ContainerStatus:
    return ContainerStatus(container_id=info.container_id, pid=info.pid)


async def first_of(*aws: Awaitable[Any]) -> None:
    """Wait until the first of `aws` (coroutines or futures) finishes; cancel the others."""
    futs = [asyncio.ensure_future(a) for a in aws]
    try:
        await asyncio.wait(futs, return_when=asyncio.FIRST_COMPLETED)
    finally:
        for f in futs:
            f.cancel()


async def drive(runner: TaskRunner,
                on_status: Callable[[TaskRunner], Awaitable[None] | None]) -> None:
    """Step `runner` until cancelled, calling `on_status` after each status change.

    `on_status` runs before the next step, and when it returns an awaitable the next step waits
    for it: so the agent can have STARTING on disk before `start` is called (the guarantee that
    a container is never started twice for one task).
    """
    while True:
        before = runner.status
        outcome = await runner.step()
        if runner.status is not before:
            durable = on_status(runner)
            if durable is not None:
                await durable
        if outcome is Outcome.PROGRESS:
            continue
        await runner.wait_changed(runner.retry_delay_s if outcome is Outcome.RETRY else None)

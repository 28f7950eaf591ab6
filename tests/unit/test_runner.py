"""The task runner's state machine (shoal/agent/runner.py) against the in-memory FakeExecutor."""

from __future__ import annotations

import asyncio
import datetime as dt

import msgspec
import pytest

from shoal.agent.exec.protocol import ExecError
from shoal.agent.runner import (
    ERR_EXIT_UNKNOWN,
    ERR_EXITED_WHILE_DOWN,
    ERR_VANISHED,
    Outcome,
    TaskRunner,
    drive,
)
from shoal.api.states import TaskState
from shoal.api.types import ContainerSpec, ContainerStatus, Task, TaskSpec, TaskStatus
from shoal.testing.fake_executor import SIGTERM_EXIT_CODE, FakeExecutor, FakeHost

S = TaskState
DEADLINE_S = 5.0


class TickClock:
    """Every `now()` is one second after the last, so each status change has a new timestamp."""

    def __init__(self) -> None:
        self.t = dt.datetime(2024, 1, 1, tzinfo=dt.UTC)
        self.slept: list[float] = []

    def now(self) -> dt.datetime:
        self.t += dt.timedelta(seconds=1)
        return self.t

    def monotonic(self) -> float:
        return 0.0

    async def sleep(self, seconds: float) -> None:
        self.slept.append(seconds)
        await asyncio.sleep(0)


def make_task(image: str = "busybox", desired: TaskState = S.RUNNING, task_id: str = "t1") -> Task:
    return Task(id=task_id, desired_state=desired,
                spec=TaskSpec(container_spec=ContainerSpec(image=image)),
                status=TaskStatus(state=S.ASSIGNED, message="scheduler assigned task to node"))


def state_of(runner: TaskRunner) -> TaskState:
    return runner.status.state


async def advance_to(runner: TaskRunner, state: TaskState) -> None:
    """Step a fresh runner (desired RUNNING) until its status is `state`."""
    for _ in range(10):
        if runner.status.state is state:
            return
        assert await runner.step() is Outcome.PROGRESS
    raise AssertionError(f"never reached {state}")


# from, desired, image (exit code set for "exit0"/"exit3"), -> state, message, err, outcome, calls
TABLE = [
    (S.ASSIGNED, S.RUNNING, "busybox", S.ACCEPTED, "accepted", "", Outcome.PROGRESS, []),
    (S.ASSIGNED, S.READY, "busybox", S.ACCEPTED, "accepted", "", Outcome.PROGRESS, []),
    (S.ASSIGNED, S.ASSIGNED, "busybox", S.ASSIGNED, None, "", Outcome.PAUSED, []),
    (S.ACCEPTED, S.RUNNING, "busybox", S.PREPARING, "preparing", "", Outcome.PROGRESS, []),
    (S.ACCEPTED, S.ACCEPTED, "busybox", S.ACCEPTED, "accepted", "", Outcome.PAUSED, []),
    (S.PREPARING, S.RUNNING, "busybox", S.READY, "prepared", "", Outcome.PROGRESS, ["prepare"]),
    (S.PREPARING, S.READY, "busybox", S.READY, "prepared", "", Outcome.PROGRESS, ["prepare"]),
    (S.PREPARING, S.RUNNING, "nope", S.REJECTED, "preparing", "No such image: nope", Outcome.PROGRESS,
     ["prepare"]),
    (S.READY, S.READY, "busybox", S.READY, "prepared", "", Outcome.PAUSED, []),
    (S.READY, S.RUNNING, "busybox", S.STARTING, "starting", "", Outcome.PROGRESS, []),
    (S.STARTING, S.RUNNING, "busybox", S.RUNNING, "started", "", Outcome.PROGRESS, ["start"]),
    (S.STARTING, S.READY, "busybox", S.RUNNING, "started", "", Outcome.PROGRESS, ["start"]),
    (S.RUNNING, S.RUNNING, "exit0", S.COMPLETE, "finished", "", Outcome.PROGRESS, ["wait"]),
    (S.RUNNING, S.RUNNING, "exit3", S.FAILED, "started", "task: non-zero exit (3)", Outcome.PROGRESS,
     ["wait"]),
    (S.ASSIGNED, S.SHUTDOWN, "busybox", S.SHUTDOWN, "shutdown", "", Outcome.PROGRESS, []),
    (S.READY, S.SHUTDOWN, "busybox", S.SHUTDOWN, "shutdown", "", Outcome.PROGRESS, []),
    (S.READY, S.REMOVE, "busybox", S.SHUTDOWN, "shutdown", "", Outcome.PROGRESS, []),
    (S.RUNNING, S.SHUTDOWN, "busybox", S.SHUTDOWN, "shutdown", "", Outcome.PROGRESS, ["shutdown"]),
    (S.COMPLETE, S.RUNNING, "exit0", S.COMPLETE, "finished", "", Outcome.PROGRESS, ["remove"]),
]


@pytest.mark.parametrize(("start", "desired", "image", "state", "message", "err", "outcome", "calls"), TABLE)
def test_transition_table(start: TaskState, desired: TaskState, image: str, state: TaskState,
                          message: str | None, err: str, outcome: Outcome, calls: list[str]) -> None:
    async def scenario() -> None:
        ex = FakeExecutor()
        ex.missing_images.add("nope")
        ex.exit_codes.update({"exit0": 0, "exit3": 3})
        runner = TaskRunner(make_task(image), ex, TickClock())
        await advance_to(runner, start)
        runner.update(msgspec.structs.replace(runner.task, desired_state=desired))
        before, n_calls = runner.status, len(ex.calls)
        assert await asyncio.wait_for(runner.step(), DEADLINE_S) is outcome
        assert runner.status.state is state
        assert runner.status.message == (before.message if message is None else message)
        assert runner.status.err == err
        assert [m for m, _ in ex.calls[n_calls:]] == calls
        assert runner.status.state >= before.state  # states only move forward
        if runner.status != before:
            assert runner.status.timestamp > before.timestamp

    asyncio.run(scenario())


def test_running_records_container_and_exit_code() -> None:
    async def scenario() -> None:
        ex = FakeExecutor()
        runner = TaskRunner(make_task(), ex, TickClock())
        await advance_to(runner, S.RUNNING)
        cs = runner.status.container_status
        assert cs is not None and cs.container_id == "c-t1" and cs.pid == ex.host.containers["t1"].pid > 0
        step = asyncio.create_task(runner.step())
        await asyncio.sleep(0)
        assert not step.done()  # waits for the exit, does not spin
        ex.exit(runner.task_id, 2)
        assert await asyncio.wait_for(step, DEADLINE_S) is Outcome.PROGRESS
        assert state_of(runner) is S.FAILED and runner.status.err == "task: non-zero exit (2)"
        assert runner.status.container_status == ContainerStatus(container_id="c-t1", pid=0, exit_code=2)

    asyncio.run(scenario())


def test_shutdown_interrupts_the_wait_and_records_exit_code() -> None:
    async def scenario() -> None:
        ex = FakeExecutor()
        runner = TaskRunner(make_task(), ex, TickClock())
        await advance_to(runner, S.RUNNING)
        step = asyncio.create_task(runner.step())
        await asyncio.sleep(0)
        runner.update(msgspec.structs.replace(runner.task, desired_state=S.SHUTDOWN))
        assert await asyncio.wait_for(step, DEADLINE_S) is Outcome.PROGRESS
        assert state_of(runner) is S.RUNNING  # the wait ended; the next step shuts down
        assert await runner.step() is Outcome.PROGRESS
        assert state_of(runner) is S.SHUTDOWN and runner.status.message == "shutdown"
        assert runner.status.container_status is not None
        assert runner.status.container_status.exit_code == SIGTERM_EXIT_CODE
        assert await runner.step() is Outcome.PROGRESS  # removes the container
        assert "t1" not in ex.host.containers and ex.count("remove", "t1") == 1
        assert await runner.step() is Outcome.DONE
        await asyncio.wait_for(runner.wait_settled(), DEADLINE_S)

    asyncio.run(scenario())


def test_temporary_error_retries_with_backoff_then_proceeds() -> None:
    async def scenario() -> None:
        ex = FakeExecutor()
        runner = TaskRunner(make_task(), ex, TickClock())
        await advance_to(runner, S.PREPARING)
        ex.fail("prepare", ExecError("registry busy", temporary=True), times=2)
        assert await runner.step() is Outcome.RETRY
        assert state_of(runner) is S.PREPARING and runner.status.err == "registry busy"
        first_delay = runner.retry_delay_s
        assert await runner.step() is Outcome.RETRY
        assert runner.retry_delay_s == 2 * first_delay
        assert await runner.step() is Outcome.PROGRESS
        assert state_of(runner) is S.READY and runner.status.err == ""
        assert ex.count("prepare", "t1") == 3

    asyncio.run(scenario())


@pytest.mark.parametrize(("state", "fatal_state"), [(S.PREPARING, S.REJECTED), (S.STARTING, S.FAILED)])
def test_fatal_error_rejects_before_starting_and_fails_after(state: TaskState,
                                                             fatal_state: TaskState) -> None:
    async def scenario() -> None:
        ex = FakeExecutor()
        runner = TaskRunner(make_task(), ex, TickClock())
        await advance_to(runner, state)
        ex.fail("prepare" if state is S.PREPARING else "start", ExecError("boom"))
        assert await runner.step() is Outcome.PROGRESS
        assert runner.status.state is fatal_state and runner.status.err == "boom"
        assert ex.host.starts["t1"] == 0

    asyncio.run(scenario())


def recovered_runner(ex: FakeExecutor, state: TaskState, pid: int = 0) -> TaskRunner:
    status = TaskStatus(state=state, message="started",
                        container_status=ContainerStatus(container_id="c-t1", pid=pid))
    return TaskRunner(make_task(), ex, TickClock(), status=status)


def started_elsewhere(host: FakeHost) -> int:
    """Start t1 with one executor (the shoald that died); return its PID."""
    async def start() -> int:
        first = FakeExecutor(host=host)
        await first.prepare(make_task())
        return (await first.start(make_task())).pid

    return asyncio.run(start())


@pytest.mark.parametrize("state", [S.STARTING, S.RUNNING])
def test_recovered_running_container_is_adopted_not_restarted(state: TaskState) -> None:
    host = FakeHost()
    pid = started_elsewhere(host)

    async def scenario() -> None:
        ex = FakeExecutor(host=host)
        runner = recovered_runner(ex, state, pid=pid if state is S.RUNNING else 0)
        assert await runner.step() is Outcome.PROGRESS
        assert state_of(runner) is S.RUNNING
        assert runner.status.container_status == ContainerStatus(container_id="c-t1", pid=pid)
        step = asyncio.create_task(runner.step())
        await asyncio.sleep(0)
        ex.exit("t1", 0)
        assert await asyncio.wait_for(step, DEADLINE_S) is Outcome.PROGRESS
        assert state_of(runner) is S.FAILED and runner.status.err == ERR_EXIT_UNKNOWN
        assert host.starts["t1"] == 1 and ex.count("start", "t1") == 0

    asyncio.run(scenario())


@pytest.mark.parametrize(("what", "err"), [("vanish", ERR_VANISHED), ("exit", ERR_EXITED_WHILE_DOWN)])
def test_recovered_container_gone_or_exited_fails(what: str, err: str) -> None:
    host = FakeHost()
    started_elsewhere(host)

    async def scenario() -> None:
        ex = FakeExecutor(host=host)
        if what == "vanish":
            ex.vanish("t1")
        else:
            ex.exit("t1", 1)
        runner = recovered_runner(ex, S.RUNNING)
        assert await runner.step() is Outcome.PROGRESS
        assert state_of(runner) is S.FAILED and runner.status.err == err
        assert ex.count("start", "t1") == 0

    asyncio.run(scenario())


class CountingRunner(TaskRunner):
    steps = 0

    async def step(self) -> Outcome:
        self.steps += 1
        return await super().step()


def test_drive_reports_each_change_in_order_and_sleeps_when_paused() -> None:
    async def scenario() -> None:
        ex = FakeExecutor()
        runner = CountingRunner(make_task(desired=S.READY), ex, TickClock())
        seen: list[TaskState] = []
        changed = asyncio.Event()

        def on_status(r: TaskRunner) -> None:
            seen.append(r.status.state)
            changed.set()

        driver = asyncio.create_task(drive(runner, on_status))
        while seen[-1:] != [S.READY]:
            changed.clear()
            await asyncio.wait_for(changed.wait(), DEADLINE_S)
        assert ex.host.starts["t1"] == 0  # desired READY: it waits in READY
        steps = runner.steps
        for _ in range(20):  # give a busy loop every chance to show itself
            await asyncio.sleep(0)
        assert runner.steps == steps
        runner.update(msgspec.structs.replace(runner.task, desired_state=S.RUNNING))
        while seen[-1:] != [S.RUNNING]:
            changed.clear()
            await asyncio.wait_for(changed.wait(), DEADLINE_S)
        ex.exit("t1", 0)
        await asyncio.wait_for(runner.wait_settled(), DEADLINE_S)
        driver.cancel()
        await asyncio.gather(driver, return_exceptions=True)
        assert seen == [S.ACCEPTED, S.PREPARING, S.READY, S.STARTING, S.RUNNING, S.COMPLETE]
        assert "t1" not in ex.host.containers

    asyncio.run(scenario())

"""The restart supervisor's decision table (shoal/manager/orchestrator/restart.py)."""

from __future__ import annotations

import datetime as dt

import pytest

from shoal.api.states import TaskState
from shoal.api.types import ContainerSpec, RestartPolicy, Task, TaskSpec, TaskStatus
from shoal.manager.orchestrator.restart import (
    RestartAction,
    RestartDecision,
    decide_restart,
    next_restart_count,
)

S = 1_000_000_000
NOW = dt.datetime(2024, 1, 1, 12, 0, 0, tzinfo=dt.UTC)


def spec(policy: RestartPolicy | None, image: str = "img:1") -> TaskSpec:
    return TaskSpec(container_spec=ContainerSpec(image=image), restart_policy=policy)


def dead(policy: RestartPolicy | None, *, state: TaskState = TaskState.FAILED, died_s_ago: float = 60,
         restart_count: int = 0, image: str = "img:1") -> Task:
    return Task(
        id="dead", slot=1, spec=spec(policy, image), desired_state=TaskState.RUNNING,
        status=TaskStatus(state=state, timestamp=NOW - dt.timedelta(seconds=died_s_ago)),
        restart_count=restart_count, created_at=NOW - dt.timedelta(seconds=died_s_ago + 1),
    )


def restarted(policy: RestartPolicy | None, created_s_ago: float, image: str = "img:1") -> Task:
    """A task of the slot that a restart made `created_s_ago` seconds ago."""
    return Task(id=f"r{created_s_ago}", slot=1, spec=spec(policy, image), restart_count=1,
                desired_state=TaskState.SHUTDOWN, status=TaskStatus(state=TaskState.FAILED),
                created_at=NOW - dt.timedelta(seconds=created_s_ago))


NONE = RestartPolicy(condition="none")
ON_FAILURE = RestartPolicy(condition="on-failure", delay=0)
ANY = RestartPolicy(condition="any", delay=0)
MAX3 = RestartPolicy(condition="any", delay=0, max_attempts=3)
WINDOW = RestartPolicy(condition="any", delay=0, max_attempts=2, window=60 * S)

CASES: list[tuple[str, Task, list[Task], RestartDecision]] = [
    ("none never restarts", dead(NONE), [], RestartDecision(RestartAction.NEVER)),
    ("on-failure: complete stays", dead(ON_FAILURE, state=TaskState.COMPLETE), [],
     RestartDecision(RestartAction.NEVER)),
    ("on-failure: failed restarts", dead(ON_FAILURE), [], RestartDecision(RestartAction.RESTART)),
    ("on-failure: rejected restarts", dead(ON_FAILURE, state=TaskState.REJECTED), [],
     RestartDecision(RestartAction.RESTART)),
    ("any: complete restarts", dead(ANY, state=TaskState.COMPLETE), [],
     RestartDecision(RestartAction.RESTART)),
    ("default policy waits 5 s from the status", dead(None, died_s_ago=1), [],
     RestartDecision(RestartAction.WAIT, wait_s=4.0)),
    ("default policy after 5 s restarts", dead(None, died_s_ago=5), [],
     RestartDecision(RestartAction.RESTART)),
    ("explicit delay", dead(RestartPolicy(delay=10 * S), died_s_ago=4), [],
     RestartDecision(RestartAction.WAIT, wait_s=6.0)),
    ("max attempts left", dead(MAX3, restart_count=2), [], RestartDecision(RestartAction.RESTART)),
    ("max attempts used up", dead(MAX3, restart_count=3), [], RestartDecision(RestartAction.NEVER)),
    ("window: one recent restart counts", dead(WINDOW, restart_count=5), [restarted(WINDOW, 10)],
     RestartDecision(RestartAction.RESTART)),
    ("window: two recent restarts wait for the oldest to leave", dead(WINDOW, restart_count=5),
     [restarted(WINDOW, 10), restarted(WINDOW, 20)], RestartDecision(RestartAction.WAIT, wait_s=40.0)),
    ("window: old restarts do not count", dead(WINDOW, restart_count=5),
     [restarted(WINDOW, 10), restarted(WINDOW, 70)], RestartDecision(RestartAction.RESTART)),
    ("window: restarts of another spec do not count", dead(WINDOW),
     [restarted(WINDOW, 10, image="img:0"), restarted(WINDOW, 20, image="img:0")],
     RestartDecision(RestartAction.RESTART)),
]


@pytest.mark.parametrize(("name", "task", "others", "expected"), CASES, ids=[c[0] for c in CASES])
def test_decide_restart(name: str, task: Task, others: list[Task], expected: RestartDecision) -> None:
    got = decide_restart(task, [task, *others], NOW)
    assert got.action == expected.action
    assert got.wait_s == pytest.approx(expected.wait_s)


@pytest.mark.parametrize(("image", "count", "expected"), [
    ("img:1", 0, 1), ("img:1", 4, 5), ("img:2", 4, 0),
])
def test_next_restart_count_resets_on_a_new_spec(image: str, count: int, expected: int) -> None:
    old = dead(ANY, restart_count=count)
    assert next_restart_count(old, spec(ANY, image)) == expected

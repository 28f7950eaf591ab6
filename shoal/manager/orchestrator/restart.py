"""The restart supervisor: should a dead task be replaced, now, later or never?

Called by the plan functions for a slot's live task (desired <= RUNNING) whose status is terminal
(FAILED, COMPLETE, REJECTED, ORPHANED, or SHUTDOWN that Shoal did not ask for). Pure: the answer
depends only on the task, the other tasks of its slot, the task's RestartPolicy and `now`
(swarmkit: manager/orchestrator/restart/restart.go; reference §4.6).

| condition  | task state             | answer                                              |
|------------|------------------------|-----------------------------------------------------|
| none       | any                    | NEVER: the slot stays dead (not refilled)           |
| on-failure | COMPLETE (exit 0)      | NEVER                                               |
| on-failure | FAILED/REJECTED/...    | as `any`                                            |
| any        | any                    | NEVER if MaxAttempts are used up, else WAIT    |
|            |                        | until Delay has passed since the task's        |
|            |                        | Status.Timestamp, then RESTART                 |

MaxAttempts counts restarts of the same spec in the slot. Without a Window it is the task's
`restart_count` (stored on each task, so it survives history pruning and leader changes). With
a Window only restarts made within it count — read from the slot's tasks, so pruned history no
longer counts, and the answer is WAIT until the oldest counted restart leaves the window (the
window is a rate limit; swarmkit also re-evaluates it whenever it looks again).

Differences from swarmkit: the replacement is created only once the delay has passed (swarmkit
creates it at once with desired READY and promotes it later), and a task not restarted keeps its
desired RUNNING, so the slot's "dead, do not refill" state is visible in the store.
"""

from __future__ import annotations

import datetime as dt
import enum
from collections.abc import Sequence
from dataclasses import dataclass

from shoal.api.defaults import SECOND_NS, effective_restart_policy
from shoal.api.states import TaskState
from shoal.api.types import RestartPolicy, Task, TaskSpec


class RestartAction(enum.Enum):
    RESTART = "restart"
    WAIT = "wait"
    NEVER = "never"


@dataclass(frozen=True)
class RestartDecision:
    action: RestartAction
    wait_s: float = 0.0  # for WAIT: seconds until the answer may change
    reason: str = ""


def decide_restart(task: Task, slot_tasks: Sequence[Task], now: dt.datetime) -> RestartDecision:
    """The restart decision for the dead live task `task` of a slot holding `slot_tasks`."""
    policy = effective_restart_policy(task.spec.restart_policy)
    if policy.condition == "none":
        return RestartDecision(RestartAction.NEVER, reason="restart condition none")
    if policy.condition == "on-failure" and task.status.state == TaskState.COMPLETE:
        return RestartDecision(RestartAction.NEVER, reason="completed; restart condition on-failure")
    waits = [_delay_left_s(task, policy, now)]
    if policy.max_attempts:
        used, free_in_s = _attempts(task, slot_tasks, policy, now)
        if used >= policy.max_attempts:
            if free_in_s is None:
                return RestartDecision(RestartAction.NEVER,
                                       reason=f"restart attempts used up ({used}/{policy.max_attempts})")
            waits.append(free_in_s)
    wait_s = max(waits)
    if wait_s > 0:
        return RestartDecision(RestartAction.WAIT, wait_s=wait_s, reason="restart delayed")
    return RestartDecision(RestartAction.RESTART)


def next_restart_count(dead: Task, template: TaskSpec) -> int:
    """The replacement's `restart_count`: one more than the dead task's if the spec is the same."""
    return dead.restart_count + 1 if dead.spec == template else 0


def _delay_left_s(task: Task, policy: RestartPolicy, now: dt.datetime) -> float:
    delay_s = (policy.delay or 0) / SECOND_NS
    elapsed_s = (now - task.status.timestamp).total_seconds()
    return max(0.0, delay_s - elapsed_s)


def _attempts(task: Task, slot_tasks: Sequence[Task], policy: RestartPolicy,
              now: dt.datetime) -> tuple[int, float | None]:
    """(restarts that count, seconds until one stops counting or None if never)."""
    if not policy.window:
        return task.restart_count, None
    window = dt.timedelta(microseconds=policy.window // 1000)
    since = now - window
    # Tasks made by a restart (restart_count > 0) of this same spec, within the window.
    counted = sorted(t.created_at for t in slot_tasks
                     if t.restart_count > 0 and t.spec == task.spec and t.created_at > since)
    if not counted:
        return 0, None
    return len(counted), max(0.0, (counted[0] + window - now).total_seconds())

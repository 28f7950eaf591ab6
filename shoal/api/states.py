"""Task states: they only move forward (a Lamport clock, as swarmkit's TaskState).

The value of each member is Docker's wire name ("running"); `rank` orders them. Of two
observations of one task, the greater rank wins.

| state     | rank | written by    | meaning                                             |
|-----------|------|---------------|-----------------------------------------------------|
| new       | 0    | orchestrator  | created for a slot                                  |
| pending   | 64   | allocator     | resources allocated, waiting for a node             |
| assigned  | 192  | scheduler     | NodeID set                                          |
| accepted  | 256  | agent         | the agent took it                                   |
| preparing | 320  | agent         | image, rootfs, netns, bundle                        |
| ready     | 384  | agent         | prepared, waiting to start                          |
| starting  | 448  | agent         | the runtime is starting it                          |
| running   | 512  | agent         | the container runs                                  |
| complete  | 576  | agent         | exited 0                                            |
| shutdown  | 640  | agent         | stopped because the manager asked                   |
| failed    | 704  | agent         | exited non-zero or vanished                         |
| rejected  | 768  | agent         | could not be prepared (e.g. No such image)          |
| remove    | 800  | orchestrator  | desired state only: shut down, then delete          |
| orphaned  | 832  | dispatcher    | its node stayed down                                |
"""

from __future__ import annotations

import enum
import functools

_RANKS = {
    "new": 0, "pending": 64, "assigned": 192, "accepted": 256, "preparing": 320, "ready": 384,
    "starting": 448, "running": 512, "complete": 576, "shutdown": 640, "failed": 704,
    "rejected": 768, "remove": 800, "orphaned": 832,
}


@functools.total_ordering
class TaskState(enum.Enum):
    NEW = "new"
    PENDING = "pending"
    ASSIGNED = "assigned"
    ACCEPTED = "accepted"
    PREPARING = "preparing"
    READY = "ready"
    STARTING = "starting"
    RUNNING = "running"
    COMPLETE = "complete"
    SHUTDOWN = "shutdown"
    FAILED = "failed"
    REJECTED = "rejected"
    REMOVE = "remove"
    ORPHANED = "orphaned"

    @property
    def rank(self) -> int:
        return _RANKS[self.value]

    def __lt__(self, other: object) -> bool:
        if not isinstance(other, TaskState):
            return NotImplemented
        return _RANKS[self.value] < _RANKS[other.value]

    def __hash__(self) -> int:
        return hash(self.value)

    @property
    def terminal(self) -> bool:
        """A task in a terminal state will never run again."""
        return _RANKS[self.value] >= 576

    @property
    def active(self) -> bool:
        """Assigned to a node and not yet terminal: it holds node resources."""
        return 192 <= _RANKS[self.value] < 576

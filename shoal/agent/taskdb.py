"""The agent's record of its tasks and their last status, kept on disk for adoption.

agent/agent.py writes a task's record on each status change and reads the file back when a new
shoald starts on the same data root (after a crash or kill -9): a task recorded as STARTING or
RUNNING has a container this process must adopt, never start again. The agent flushes at once
before calling `start` (STARTING) and when a task turns terminal; other changes are batched.

File: `state_dir/tasks.json`, JSON `{"Version": 1, "Tasks": [{"Task": ..., "Status": ...}]}` in
Docker's field names. Written atomically (temporary file, fsync, rename, fsync of the directory),
so a crash leaves either the old or the new file, never a torn one.
"""

from __future__ import annotations

import logging
import os
from pathlib import Path

import msgspec

from shoal.api.types import Task, TaskStatus

log = logging.getLogger("shoal.agent")

FILE_NAME = "tasks.json"
FORMAT_VERSION = 1


class TaskRecord(msgspec.Struct, rename="pascal", frozen=True, kw_only=True):
    """One task as the agent last knew it: the manager's copy and the agent's status."""

    task: Task
    status: TaskStatus


class _File(msgspec.Struct, rename="pascal", kw_only=True):
    version: int = FORMAT_VERSION
    tasks: list[TaskRecord] = []


class TaskDB:
    """An in-memory map of task id -> TaskRecord, written to `state_dir/tasks.json` by `flush`."""

    def __init__(self, state_dir: Path) -> None:
        self.path = state_dir / FILE_NAME
        self._records: dict[str, TaskRecord] = {}
        self.dirty = False

    def load(self) -> dict[str, TaskRecord]:
        """Read the file (none yet: empty). An unreadable file is moved aside, not trusted."""
        try:
            data = self.path.read_bytes()
        except FileNotFoundError:
            data = b""
        if data:
            try:
                decoded = msgspec.json.decode(data, type=_File)
            except msgspec.DecodeError as e:
                aside = self.path.with_suffix(".corrupt")
                log.error("%s is unreadable (%s); moved to %s, starting with no tasks", self.path, e, aside)
                os.replace(self.path, aside)
                decoded = _File()
            self._records = {r.task.id: r for r in decoded.tasks}
        self.dirty = False
        return dict(self._records)

    def records(self) -> dict[str, TaskRecord]:
        return dict(self._records)

    def put(self, task: Task, status: TaskStatus) -> None:
        self._records[task.id] = TaskRecord(task=task, status=status)
        self.dirty = True

    def delete(self, task_id: str) -> None:
        if self._records.pop(task_id, None) is not None:
            self.dirty = True

    def flush(self) -> None:
        """Write the records if anything changed since the last write."""
        if not self.dirty:
            return
        self.path.parent.mkdir(parents=True, exist_ok=True)
        body = msgspec.json.encode(_File(tasks=list(self._records.values())))
        tmp = self.path.with_suffix(".tmp")
        with open(tmp, "wb") as f:
            f.write(body)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, self.path)
        _fsync_dir(self.path.parent)  # makes the rename itself durable
        self.dirty = False

    def clear(self) -> None:
        """Forget every task and delete the file (the node left the swarm)."""
        self._records.clear()
        self.dirty = False
        self.path.unlink(missing_ok=True)


def _fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)

"""Task logs over agent sessions: the manager's end of LogsRequest / LogsChunk / LogsCancel.

`service logs` on a manager reads through `ClusterLogSource` (an `api.services.LogSource`): it
finds the task's node in the store and asks `Dispatcher.task_logs`, which sends a LogsRequest on
that node's session and yields the lines of the LogsChunk frames that answer it. The agent's end
is shoal/agent/logserve.py; the frames are in shoal/api/protocol.py.

Each session has a `LogRouter`: request ids (unique per session), and one bounded buffer per open
request. The session's read loop hands it each LogsChunk without ever waiting (`deliver`), so a
slow reader of logs can never hold back heartbeats or status batches behind it. A request whose
reader falls more than `MAX_BUFFERED_BYTES` behind is aborted politely: the agent is sent
LogsCancel, and the reader gets what was buffered, then `Unavailable`. A reader that stops early
(`break`, cancellation, closing the iterator) sends LogsCancel too; chunks still in flight for it
are dropped.

Errors, as Docker's log broker reports them (the API server writes them on stream 3):
  - the agent ends a request with an error (e.g. its LogSource raised) -> `ShoalError(message)`;
  - the session ends while a request is open -> `Unavailable("node X: session ended ...")`;
  - the node has no session: `follow` -> `Unavailable("node X is not connected")`; without
    follow, nothing is yielded, so that `service logs` still shows the tasks of the nodes that
    are up (the lines of a down node are unreachable, as in Docker).
  - the task is not in the store -> `NotFound`; a task not yet on a node yields nothing.
"""

from __future__ import annotations

import asyncio
import contextlib
import datetime as dt
import itertools
import logging
from collections import deque
from collections.abc import AsyncGenerator
from typing import Protocol

from shoal.api import protocol
from shoal.api.errors import NotFound, ShoalError, Unavailable
from shoal.api.protocol import LogsCancel, LogsChunk, LogsRequest
from shoal.api.services import LogLine
from shoal.api.types import Task
from shoal.store.protocol import Store

log = logging.getLogger(__name__)

MAX_BUFFERED_BYTES = 16 * 1024 * 1024  # per open request: ~256 full chunks of the agent's 64 KiB
_LINE_OVERHEAD = 16  # bytes counted per line beyond its message (timestamp, stream)
_EPOCH = dt.datetime(1970, 1, 1, tzinfo=dt.UTC)


def to_ns(ts: dt.datetime) -> int:
    """Unix time in ns (a naive datetime is taken as UTC)."""
    if ts.tzinfo is None:
        ts = ts.replace(tzinfo=dt.UTC)
    return (ts - _EPOCH) // dt.timedelta(microseconds=1) * 1000


def from_ns(ns: int) -> dt.datetime:
    return _EPOCH + dt.timedelta(microseconds=ns // 1000)


def _chunk_bytes(chunk: LogsChunk) -> int:
    return sum(len(line.message) + _LINE_OVERHEAD for line in chunk.lines)


class _Stream:
    """The buffer of one open request, between the read loop and the reader of the lines."""

    def __init__(self, request_id: int, task_id: str, limit: int) -> None:
        self.request_id, self.task_id, self.limit = request_id, task_id, limit
        self.chunks: deque[tuple[LogsChunk, int]] = deque()
        self.buffered = 0
        self.error: ShoalError | None = None
        self.wake = asyncio.Event()

    def push(self, chunk: LogsChunk) -> bool:
        """Buffer `chunk`; False (nothing buffered) when it would exceed the limit. The final
        chunk and a chunk into an empty buffer are always taken, so that progress is possible."""
        size = _chunk_bytes(chunk)
        if self.chunks and not chunk.done and self.buffered + size > self.limit:
            return False
        self.chunks.append((chunk, size))
        self.buffered += size
        self.wake.set()
        return True

    def fail(self, error: ShoalError) -> None:
        """End the stream with `error`, after what is already buffered."""
        if self.error is None:
            self.error = error
        self.wake.set()

    async def next_chunk(self) -> LogsChunk:
        while not self.chunks:
            if self.error is not None:
                raise self.error
            self.wake.clear()
            await self.wake.wait()
        chunk, size = self.chunks.popleft()
        self.buffered -= size
        return chunk


class LogRouter:
    """The open log requests of one agent session. `deliver` is called by the session's read loop
    and never waits; `read` is the requester's side."""

    def __init__(self, node_id: str, writer: asyncio.StreamWriter, *,
                 max_buffered_bytes: int = MAX_BUFFERED_BYTES) -> None:
        self.node_id = node_id
        self._writer = writer
        self._limit = max_buffered_bytes
        self._ids = itertools.count(1)
        self._streams: dict[int, _Stream] = {}
        self._closed: str | None = None

    def open_requests(self) -> int:
        return len(self._streams)

    async def read(self, task_id: str, *, tail: int | None, since: dt.datetime | None,
                   follow: bool) -> AsyncGenerator[LogLine, None]:
        """Ask the agent for the task's lines and yield them (see the module docstring)."""
        if self._closed is not None:
            raise Unavailable(self._closed)
        stream = _Stream(next(self._ids), task_id, self._limit)
        self._streams[stream.request_id] = stream
        request = LogsRequest(request_id=stream.request_id, task_id=task_id, tail=tail,
                              since_ns=None if since is None else to_ns(since), follow=follow)
        try:
            try:
                await protocol.write_message(self._writer, request)
            except (ConnectionError, RuntimeError) as exc:
                raise Unavailable(f"node {self.node_id}: cannot ask for logs: {exc}") from exc
            while True:
                chunk = await stream.next_chunk()
                for line in chunk.lines:
                    yield LogLine(from_ns(line.timestamp_ns), line.stream, line.message)
                if chunk.done:
                    if chunk.error:
                        raise ShoalError(chunk.error)
                    return
        finally:
            self._release(stream)

    def deliver(self, chunk: LogsChunk) -> None:
        """Route one chunk from the agent to its request; never blocks."""
        stream = self._streams.get(chunk.request_id)
        if stream is None:  # its reader is gone (LogsCancel sent) or it never existed
            log.debug("node %s: logs chunk for closed request %d dropped", self.node_id, chunk.request_id)
            return
        if chunk.done:
            del self._streams[chunk.request_id]
        if not stream.push(chunk):
            del self._streams[chunk.request_id]
            self._cancel(chunk.request_id)
            log.warning("node %s: logs of task %s: reader too slow, request aborted",
                        self.node_id, stream.task_id)
            stream.fail(Unavailable(f"logs of task {stream.task_id} from node {self.node_id}: "
                                    "reader too slow, stream aborted"))

    def close(self, reason: str) -> None:
        """The session ended: every open request fails (after its buffered lines) with `reason`."""
        self._closed = reason
        streams, self._streams = list(self._streams.values()), {}
        for stream in streams:
            stream.fail(Unavailable(reason))

    def _release(self, stream: _Stream) -> None:
        """The reader stopped: if the agent may still be sending, tell it to stop."""
        if self._streams.pop(stream.request_id, None) is not None:
            self._cancel(stream.request_id)

    def _cancel(self, request_id: int) -> None:
        # A plain write (no drain): called from `finally` blocks and the read loop, neither of
        # which may wait. One frame is written whole, so it cannot interleave with another.
        if self._closed is not None or self._writer.is_closing():
            return
        with contextlib.suppress(Exception):
            self._writer.write(protocol.encode(LogsCancel(request_id=request_id)))


class NodeLogs(Protocol):
    """What `ClusterLogSource` needs of the Dispatcher."""

    def task_logs(self, node_id: str, task_id: str, *, tail: int | None, since: dt.datetime | None,
                  follow: bool) -> AsyncGenerator[LogLine, None]: ...


class ClusterLogSource:
    """`api.services.LogSource` for a manager: a task's lines, read on whichever node runs it."""

    def __init__(self, store: Store, dispatcher: NodeLogs) -> None:
        self._store = store
        self._dispatcher = dispatcher

    async def read(self, task_id: str, *, tail: int | None, since: dt.datetime | None,
                   follow: bool) -> AsyncGenerator[LogLine, None]:
        task = self._store.view().get(Task, task_id)
        if task is None:
            raise NotFound(f"task {task_id} not found")
        if not task.node_id:
            return  # not scheduled yet: it has no lines anywhere
        lines = self._dispatcher.task_logs(task.node_id, task_id, tail=tail, since=since, follow=follow)
        async with contextlib.aclosing(lines):
            async for line in lines:
                yield line

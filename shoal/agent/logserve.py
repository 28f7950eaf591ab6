"""Serving task logs over the dispatcher session: the agent's end of LogsRequest / LogsChunk.

One `LogServer` per session (agent/agent.py makes it). A LogsRequest starts a task that reads
`LogSource.read(task_id, tail, since, follow)` (on a shoald: agent/logs.py `FileLogSource`) and
sends the lines in LogsChunk frames, then a final chunk with done=True (and `error` if the read
failed: a `ShoalError`'s message, or a short description of anything else). LogsCancel cancels
that task (no final chunk: the manager has forgotten the request); the end of the session
cancels them all. Which tasks exist is the LogSource's business: FileLogSource yields nothing for
a task it holds no logs of. An agent built without a LogSource answers every request with an error.

Batching: a chunk is sent when it holds MAX_CHUNK_LINES lines or MAX_CHUNK_BYTES of messages, and
at the latest FLUSH_S after its first line (so a follower sees a new line within ~50 ms). Reading
runs ahead of sending by at most READ_AHEAD lines, so a slow session slows the reading, not memory.
Frames go through the session's `send`, which shares the write lock of heartbeats and statuses.
"""

from __future__ import annotations

import asyncio
import contextlib
import datetime as dt
import logging
from collections.abc import AsyncGenerator, AsyncIterator, Awaitable, Callable

from shoal.api import protocol as proto
from shoal.api.errors import ShoalError
from shoal.api.services import LogLine, LogSource

log = logging.getLogger("shoal.agent.logs")

MAX_CHUNK_LINES = 100
MAX_CHUNK_BYTES = 64 * 1024
MAX_LINE_BYTES = 1024 * 1024  # longer messages are cut into pieces (a frame must stay bounded)
FLUSH_S = 0.05
READ_AHEAD = 1000
NO_SOURCE = "this node does not serve task logs"
_EPOCH = dt.datetime(1970, 1, 1, tzinfo=dt.UTC)

Send = Callable[[proto.Message], Awaitable[None]]


def locked_sender(writer: asyncio.StreamWriter, lock: asyncio.Lock) -> Send:
    """A `Send` that writes one frame at a time under the session's write lock."""
    async def send(message: proto.Message) -> None:
        async with lock:
            await proto.write_message(writer, message)
    return send


def wire_line(line: LogLine) -> list[proto.WireLogLine]:
    ts = line.timestamp if line.timestamp.tzinfo is not None else line.timestamp.replace(tzinfo=dt.UTC)
    ns = (ts - _EPOCH) // dt.timedelta(microseconds=1) * 1000
    msg = line.message
    return [proto.WireLogLine(ns, line.stream, msg[i:i + MAX_LINE_BYTES])
            for i in range(0, max(len(msg), 1), MAX_LINE_BYTES)]


class _End:
    """What the reading task puts last: the error it ended with, if any."""

    def __init__(self, error: Exception | None) -> None:
        self.error = error


class _Batch:
    def __init__(self) -> None:
        self.lines: list[proto.WireLogLine] = []
        self.size = 0
        self.deadline: float | None = None  # loop time by which it must be sent

    def add(self, line: LogLine) -> None:
        if self.deadline is None:
            self.deadline = asyncio.get_running_loop().time() + FLUSH_S
        for wire in wire_line(line):
            self.lines.append(wire)
            self.size += len(wire.message)

    def full(self) -> bool:
        return len(self.lines) >= MAX_CHUNK_LINES or self.size >= MAX_CHUNK_BYTES

    def fits(self, line: LogLine) -> bool:
        """Whether `line` may join this chunk (an empty chunk takes any line)."""
        return not self.lines or self.size + len(line.message) <= MAX_CHUNK_BYTES

    def take(self) -> list[proto.WireLogLine]:
        lines, self.lines, self.size, self.deadline = self.lines, [], 0, None
        return lines


class LogServer:
    """The log requests of one session. `handle` is called by the session's receive loop."""

    def __init__(self, source: LogSource | None, send: Send) -> None:
        self._source = source
        self._send = send
        self._requests: dict[int, asyncio.Task[None]] = {}

    def active(self) -> int:
        return len(self._requests)

    def handle(self, message: proto.LogsRequest | proto.LogsCancel) -> None:
        if isinstance(message, proto.LogsCancel):
            task = self._requests.pop(message.request_id, None)
            if task is not None:
                task.cancel()
            return
        old = self._requests.pop(message.request_id, None)
        if old is not None:  # a reused id: the manager no longer waits for the old one
            old.cancel()
        task = asyncio.create_task(self._serve(message), name=f"logs-{message.request_id}")
        self._requests[message.request_id] = task
        task.add_done_callback(lambda t: self._finished(message.request_id, t))

    async def __aenter__(self) -> LogServer:
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.close()

    async def close(self) -> None:
        """Cancel every request (the session ended) and wait for them."""
        tasks, self._requests = list(self._requests.values()), {}
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)

    def _finished(self, request_id: int, task: asyncio.Task[None]) -> None:
        if self._requests.get(request_id) is task:
            del self._requests[request_id]
        if not task.cancelled() and task.exception() is not None:
            log.info("logs request %d ended: %r", request_id, task.exception())

    async def _serve(self, req: proto.LogsRequest) -> None:
        batch = _Batch()
        try:
            error = NO_SOURCE if self._source is None else await self._pump(self._source, req, batch)
        except ConnectionError:
            return  # the session is going down: nothing more can be sent
        await self._send(proto.LogsChunk(request_id=req.request_id, lines=batch.take(), done=True,
                                         error=error))

    async def _pump(self, source: LogSource, req: proto.LogsRequest, batch: _Batch) -> str:
        """Send the source's lines in chunks, leaving the last batch in `batch` for the final one;
        returns the error to report ("" when the source ended without one)."""
        queue: asyncio.Queue[LogLine | _End] = asyncio.Queue(READ_AHEAD)
        reader = asyncio.create_task(_read_into(source, req, queue))

        async def flush() -> None:
            await self._send(proto.LogsChunk(request_id=req.request_id, lines=batch.take()))

        try:
            while True:
                item = await _next(queue, batch.deadline)
                if item is None:  # the oldest line waiting has waited FLUSH_S
                    await flush()
                elif isinstance(item, _End):
                    return "" if item.error is None else _describe(item.error, req.task_id)
                else:
                    if not batch.fits(item):
                        await flush()
                    batch.add(item)
                    if batch.full():
                        await flush()
        finally:
            reader.cancel()
            await asyncio.gather(reader, return_exceptions=True)


def _describe(error: Exception, task_id: str) -> str:
    if isinstance(error, ShoalError):
        return error.message
    log.error("logs of task %s: read failed", task_id, exc_info=error)
    return f"cannot read the logs of task {task_id}: {error}"


async def _next(queue: asyncio.Queue[LogLine | _End], deadline: float | None) -> LogLine | _End | None:
    """The next item, or None once `deadline` (loop time) passed with nothing new."""
    if not queue.empty():
        return queue.get_nowait()
    if deadline is None:
        return await queue.get()
    try:
        return await asyncio.wait_for(queue.get(), max(0.0, deadline - asyncio.get_running_loop().time()))
    except TimeoutError:
        return None


async def _read_into(source: LogSource, req: proto.LogsRequest,
                     queue: asyncio.Queue[LogLine | _End]) -> None:
    since = None if req.since_ns is None else _EPOCH + dt.timedelta(microseconds=req.since_ns // 1000)
    lines: AsyncIterator[LogLine] | None = None
    try:
        lines = source.read(req.task_id, tail=req.tail, since=since, follow=req.follow)
        async for line in lines:
            await queue.put(line)
    except Exception as exc:
        await queue.put(_End(exc))
        return
    finally:
        if isinstance(lines, AsyncGenerator):  # closed now, not whenever it is collected
            with contextlib.suppress(Exception):
                await lines.aclose()
    await queue.put(_End(None))

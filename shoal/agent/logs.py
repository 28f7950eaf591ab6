"""Task logs: a collector that turns raw container output into timestamped JSON lines, and a reader.

Containers write stdout/stderr to D/containers/<task>/stdout.raw and stderr.raw (opened O_APPEND
by agent/exec/runtime.py). `LogCollector` (an asyncio task the daemon starts) polls those files,
splits lines and appends `{timestamp, stream, line}` records to log.jsonl, rotating to
log.jsonl.1 at a size limit, and truncates a raw file once it consumed all of it. `FileLogSource`
implements `shoal.api.services.LogSource` on those files for the API server.

Timestamps are when the collector read the line (within one poll interval, ~200 ms, of the
write), not when the container wrote it: the container writes straight into a plain file.
A line longer than 16 KiB is cut into 16 KiB records, as Docker does. Bytes that are not UTF-8
are stored as U+FFFD.
"""

from __future__ import annotations

import asyncio
import contextlib
import datetime as dt
import os
from collections import deque
from collections.abc import AsyncIterator
from pathlib import Path

import msgspec

from shoal.api.services import LogLine

POLL_S = 0.2
MAX_LINE = 16 * 1024
DEFAULT_MAX_BYTES = 10 * 1024 * 1024
STREAMS = (("stdout.raw", 1), ("stderr.raw", 2))


class LogRecord(msgspec.Struct, frozen=True):
    timestamp: dt.datetime
    stream: int  # 1 stdout, 2 stderr
    line: str


_encoder = msgspec.json.Encoder()
_decoder = msgspec.json.Decoder(LogRecord)


class LogCollector:
    """Tails the raw output of every task under D/containers/ into log.jsonl."""

    def __init__(self, data_root: Path, *, max_bytes: int = DEFAULT_MAX_BYTES,
                 poll_s: float = POLL_S) -> None:
        self.containers = Path(data_root) / "containers"
        self.max_bytes = max_bytes
        self.poll_s = poll_s
        self._partial: dict[Path, bytes] = {}  # raw file -> bytes after its last newline
        self._offset: dict[Path, int] = {}  # raw file -> bytes consumed but not truncated
        self._task: asyncio.Task[None] | None = None

    def start(self) -> None:
        if self._task is None:
            self._task = asyncio.create_task(self._loop())

    async def stop(self) -> None:
        """Stop polling after a last collection (partial lines are flushed as lines)."""
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
            self._task = None
        self.collect_all(flush=True)

    async def _loop(self) -> None:
        while True:
            await asyncio.to_thread(self.collect_all)
            await asyncio.sleep(self.poll_s)  # a polling interval, not a synchronisation

    def collect_all(self, flush: bool = False) -> None:
        try:
            dirs = [d for d in self.containers.iterdir() if d.is_dir()]
        except FileNotFoundError:
            return
        for d in dirs:
            self.collect_task(d.name, flush=flush)

    def collect_task(self, task_id: str, flush: bool = False) -> None:
        """Move what the task's raw files hold into its log.jsonl now."""
        cdir = self.containers / task_id
        records: list[LogRecord] = []
        for name, stream in STREAMS:
            records += self._drain(cdir / name, stream, flush)
        if records:
            self._append(cdir, records)

    def _drain(self, raw: Path, stream: int, flush: bool) -> list[LogRecord]:
        offset = self._offset.get(raw, 0)
        try:
            with open(raw, "rb") as f:
                f.seek(offset)
                data = f.read()
        except FileNotFoundError:
            return []
        if not data and not (flush and self._partial.get(raw)):
            return []
        # Truncate only when nothing was appended since we read: the container writes with
        # O_APPEND, so after the truncation its next write lands at offset 0. A file that is
        # still growing is truncated on a later, quieter poll.
        if os.stat(raw).st_size == offset + len(data):
            os.truncate(raw, 0)
            self._offset.pop(raw, None)
        else:
            self._offset[raw] = offset + len(data)
        pending = self._partial.pop(raw, b"") + data
        now = dt.datetime.now(dt.UTC)
        lines = pending.split(b"\n")
        tail = lines.pop()  # after the last newline: kept for the next poll unless flushing
        if flush and tail:
            lines.append(tail)
        elif tail:
            while len(tail) > MAX_LINE:
                lines.append(tail[:MAX_LINE])
                tail = tail[MAX_LINE:]
            self._partial[raw] = tail
        out = []
        for line in lines:
            for i in range(0, max(len(line), 1), MAX_LINE):
                out.append(LogRecord(now, stream, line[i:i + MAX_LINE].decode(errors="replace")))
        return out

    def _append(self, cdir: Path, records: list[LogRecord]) -> None:
        path = cdir / "log.jsonl"
        try:
            size = path.stat().st_size
        except FileNotFoundError:
            size = 0
        chunk: list[bytes] = []
        for rec in records:
            line = _encoder.encode(rec) + b"\n"
            if size and size + len(line) > self.max_bytes:
                _write(path, chunk)
                os.replace(path, cdir / "log.jsonl.1")  # keep one rotated file
                chunk, size = [], 0
            chunk.append(line)
            size += len(line)
        _write(path, chunk)


def _write(path: Path, chunk: list[bytes]) -> None:
    if chunk:
        with open(path, "ab") as f:
            f.write(b"".join(chunk))


def _records(path: Path, offset: int = 0) -> tuple[list[LogRecord], int]:
    """Records of a jsonl file from `offset`; the offset after the last complete line."""
    try:
        with open(path, "rb") as f:
            f.seek(offset)
            data = f.read()
    except FileNotFoundError:
        return [], offset
    end = data.rfind(b"\n") + 1
    out = [_decoder.decode(ln) for ln in data[:end].splitlines() if ln]
    return out, offset + end


def _line(r: LogRecord) -> LogLine:
    return LogLine(r.timestamp, r.stream, r.line.encode())


class FileLogSource:
    """`LogSource` over D/containers/<task>/log.jsonl(.1) of this host."""

    def __init__(self, data_root: Path, collector: LogCollector | None = None,
                 poll_s: float = POLL_S) -> None:
        self.containers = Path(data_root) / "containers"
        self.collector = collector
        self.poll_s = poll_s

    async def read(self, task_id: str, *, tail: int | None, since: dt.datetime | None,
                   follow: bool) -> AsyncIterator[LogLine]:
        cdir = self.containers / task_id
        if self.collector is not None:
            self.collector.collect_task(task_id)  # include what the container just wrote
        old, _ = _records(cdir / "log.jsonl.1")
        current, offset = _records(cdir / "log.jsonl")
        inode = _inode(cdir / "log.jsonl")
        selected: deque[LogRecord] = deque(maxlen=tail if tail is not None and tail >= 0 else None)
        for r in [*old, *current]:
            if since is None or r.timestamp > since:
                selected.append(r)
        for r in selected:
            yield _line(r)
        while follow:
            await asyncio.sleep(self.poll_s)  # polling interval of a follower
            if self.collector is not None:
                self.collector.collect_task(task_id)
            new, offset, inode = _follow_step(cdir, offset, inode)
            for r in new:
                yield _line(r)


def _inode(path: Path) -> int:
    try:
        return os.stat(path).st_ino
    except FileNotFoundError:
        return 0


def _follow_step(cdir: Path, offset: int, inode: int) -> tuple[list[LogRecord], int, int]:
    """New records since (inode, offset), following one rotation to log.jsonl.1."""
    current = cdir / "log.jsonl"
    now_inode = _inode(current)
    if now_inode == inode:
        new, offset = _records(current, offset)
        return new, offset, inode
    rest: list[LogRecord] = []
    if inode and _inode(cdir / "log.jsonl.1") == inode:
        rest, _ = _records(cdir / "log.jsonl.1", offset)
    new, offset = _records(current, 0)
    return rest + new, offset, now_inode

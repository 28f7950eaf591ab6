"""`/services/{id}/logs` and `/tasks/{id}/logs`: stdcopy frames (wire-protocols §1.6); via app.py.

One log line per frame: `[ts ][details ]message\\n`, where details carry the node, service and task
IDs the docker CLI needs to label lines. Headers are flushed before the first line. With
`follow=1` the stream stays open, picking up new tasks of the service (restarts) as they appear,
until the client disconnects (the AppRunner cancels the handler then).
"""

from __future__ import annotations

import asyncio
import contextlib
import datetime as dt
import struct
from urllib.parse import quote_plus

from aiohttp import web

from shoal.api.errors import InvalidArgument, ShoalError
from shoal.api.services import LogLine
from shoal.api.types import Task
from shoal.apiserver.docker.context import ApiContext, ctx, require_manager
from shoal.apiserver.docker.lookup import resolve_service, resolve_task
from shoal.apiserver.http import add_route, api_version_at_least, query_bool

_FRAME = struct.Struct(">BxxxI")
# How often a follow stream looks for new tasks of the service (restarts, scale-ups).
_NEW_TASK_POLL_S = 1.0


class _Options:
    def __init__(self, request: web.Request) -> None:
        q = request.query
        self.details = query_bool(request, "details")
        self.timestamps = query_bool(request, "timestamps")
        self.follow = query_bool(request, "follow")
        self.stdout = query_bool(request, "stdout")
        self.stderr = query_bool(request, "stderr")
        if not (self.stdout or self.stderr):
            raise InvalidArgument("Bad parameters: you must choose at least one stream")
        tail = q.get("tail", "all")
        self.tail: int | None = None if tail in ("", "all") else _int_param(tail, "tail")
        self.since = _parse_since(q.get("since", ""))


def _int_param(value: str, name: str) -> int:
    try:
        return max(0, int(value))
    except ValueError:
        raise InvalidArgument(f"invalid value for {name}: {value!r}") from None


def _parse_since(value: str) -> dt.datetime | None:
    """Docker sends `<seconds>.<nanoseconds>` (or plain seconds); 0 means from the start."""
    if not value or value == "0":
        return None
    try:
        secs = float(value)
    except ValueError:
        raise InvalidArgument(f"invalid value for since: {value!r}") from None
    return dt.datetime.fromtimestamp(secs, tz=dt.UTC)


def format_timestamp(ts: dt.datetime) -> str:
    """Go's RFC3339NanoFixed: always 9 fractional digits."""
    utc = ts.astimezone(dt.UTC)
    return utc.strftime("%Y-%m-%dT%H:%M:%S.") + f"{utc.microsecond:06d}000Z"


def frame(task: Task, line: LogLine, opts: _Options) -> bytes:
    parts: list[bytes] = []
    if opts.timestamps:
        parts.append(format_timestamp(line.timestamp).encode() + b" ")
    if opts.details:
        details = {"com.docker.swarm.node.id": task.node_id, "com.docker.swarm.service.id": task.service_id,
                   "com.docker.swarm.task.id": task.id}
        text = ",".join(f"{quote_plus(k)}={quote_plus(v)}" for k, v in sorted(details.items()))
        parts.append(text.encode() + b" ")
    payload = b"".join(parts) + line.message + b"\n"
    return _FRAME.pack(line.stream, len(payload)) + payload


async def _prepare(request: web.Request) -> web.StreamResponse:
    multiplexed = api_version_at_least(request, "1.42")
    resp = web.StreamResponse(headers={"Content-Type": "application/vnd.docker.multiplexed-stream"
                                       if multiplexed else "application/vnd.docker.raw-stream"})
    await resp.prepare(request)
    return resp


def _system_error(message: str) -> bytes:
    data = f"{message}\n".encode()
    return _FRAME.pack(3, len(data)) + data


def _incomplete(reasons: list[str]) -> bytes:
    """moby's warning when some task's logs could not be read (e.g. its node is unreachable)."""
    return _system_error("warning: incomplete log stream. some logs could not be retrieved for the "
                         f"following reasons: {', '.join(reasons)}")


async def _pump(c: ApiContext, task: Task, opts: _Options, out: asyncio.Queue[bytes]) -> None:
    wanted = {1} if not opts.stderr else ({2} if not opts.stdout else {1, 2})
    try:
        async for line in c.logs.read(task.id, tail=opts.tail, since=opts.since, follow=opts.follow):
            if line.stream in wanted:
                await out.put(frame(task, line, opts))
    except ShoalError as e:  # one task's node is gone: say so, keep the others streaming
        await out.put(_incomplete([e.message]))


async def _dump(resp: web.StreamResponse, c: ApiContext, tasks: list[Task], opts: _Options) -> None:
    """Without follow: every task's lines, merged by timestamp as swarmkit's broker interleaves them."""
    lines: list[tuple[dt.datetime, bytes]] = []
    reasons: list[str] = []
    wanted = {1} if not opts.stderr else ({2} if not opts.stdout else {1, 2})
    for task in tasks:
        try:
            async for line in c.logs.read(task.id, tail=opts.tail, since=opts.since, follow=False):
                if line.stream in wanted:
                    lines.append((line.timestamp, frame(task, line, opts)))
        except ShoalError as e:  # the lines of the other tasks still go out
            reasons.append(e.message)
    lines.sort(key=lambda item: item[0])
    for _, data in lines:
        await resp.write(data)
    if reasons:
        await resp.write(_incomplete(reasons))


async def _follow(resp: web.StreamResponse, c: ApiContext, service_id: str | None, tasks: list[Task],
                  opts: _Options) -> None:
    queue: asyncio.Queue[bytes] = asyncio.Queue(maxsize=1000)
    pumps: dict[str, asyncio.Task[None]] = {}

    def start(task: Task) -> None:
        if task.id not in pumps and task.node_id:
            pumps[task.id] = asyncio.create_task(_pump(c, task, opts, queue))

    for task in tasks:
        start(task)
    try:
        while True:
            try:
                data = await asyncio.wait_for(queue.get(), timeout=_NEW_TASK_POLL_S)
            except TimeoutError:
                if service_id is not None:
                    for task in c.store.view().tasks_of_service(service_id):
                        start(task)
                continue
            await resp.write(data)
    finally:
        for pump in pumps.values():
            pump.cancel()
        for pump in pumps.values():
            with contextlib.suppress(BaseException):
                await pump


async def _serve(request: web.Request, service_id: str | None, tasks: list[Task]) -> web.StreamResponse:
    opts = _Options(request)
    c = ctx(request)
    resp = await _prepare(request)
    tasks = sorted((t for t in tasks if t.node_id), key=lambda t: (t.slot, t.created_at))
    try:
        if opts.follow:
            await _follow(resp, c, service_id, tasks, opts)
        else:
            await _dump(resp, c, tasks, opts)
    except (ConnectionResetError, ConnectionError):
        return resp  # the client went away: nothing more to say
    except Exception as e:
        # Headers are gone already: report on the system-error stream, as moby does.
        msg = f"Error grabbing logs: {e}\n".encode()
        with contextlib.suppress(ConnectionError):
            await resp.write(_FRAME.pack(3, len(msg)) + msg)
    with contextlib.suppress(ConnectionError):
        await resp.write_eof()
    return resp


async def service_logs(request: web.Request) -> web.StreamResponse:
    tx = require_manager(request)
    svc = resolve_service(tx, request.match_info["id"])
    tasks: list[Task] = list(tx.tasks_of_service(svc.id))
    return await _serve(request, svc.id, tasks)


async def task_logs(request: web.Request) -> web.StreamResponse:
    tx = require_manager(request)
    task = resolve_task(tx, request.match_info["id"])
    return await _serve(request, None, [task])


def register(app: web.Application) -> None:
    add_route(app, "GET", "/services/{id}/logs", service_logs)
    add_route(app, "GET", "/tasks/{id}/logs", task_logs)

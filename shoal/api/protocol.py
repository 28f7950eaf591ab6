"""The agent <-> manager protocol (the dispatcher session), as bytes on a stream.

Both sides import only these types, so either can change its insides. On one host the daemon
joins them with a socket pair; across hosts (a later issue) the same frames travel over mutual TLS.

Framing: a 4-byte big-endian length, then a msgpack-encoded `Message` (a tagged union).

Session, in order:
  agent -> Register(node_id, description, running)       first frame
  manager -> Registered(node_id, heartbeat_period_ns)
  manager -> Assignments(full=True, tasks=[...])          every task assigned to the node
  manager -> Assignments(full=False, tasks=[...], removed=[...]) changes after that
  agent -> Heartbeat()                                    every heartbeat period
  agent -> StatusBatch(updates=[...])                     task status changes, batched (<= 100 ms)
A task in `Assignments.tasks` replaces the agent's copy (desired state and spec). A task id in
`removed` is no longer the node's: the agent stops it if running and forgets it.
"""

from __future__ import annotations

import asyncio
import struct

import msgspec

from shoal.api.types import NodeDescription, Task, TaskStatus

MAX_FRAME_BYTES = 64 * 1024 * 1024


class Register(msgspec.Struct, tag="register", frozen=True, kw_only=True):
    node_id: str
    description: NodeDescription
    addr: str = ""


class Registered(msgspec.Struct, tag="registered", frozen=True, kw_only=True):
    node_id: str
    heartbeat_period_ns: int


class Heartbeat(msgspec.Struct, tag="heartbeat", frozen=True, kw_only=True):
    pass


class TaskStatusUpdate(msgspec.Struct, frozen=True, kw_only=True):
    task_id: str
    status: TaskStatus


class StatusBatch(msgspec.Struct, tag="status", frozen=True, kw_only=True):
    updates: list[TaskStatusUpdate]


class Assignments(msgspec.Struct, tag="assignments", frozen=True, kw_only=True):
    full: bool
    tasks: list[Task]
    removed: list[str] = []


class SessionError(msgspec.Struct, tag="error", frozen=True, kw_only=True):
    message: str


Message = Register | Registered | Heartbeat | StatusBatch | Assignments | SessionError

_encoder = msgspec.msgpack.Encoder()
_decoder = msgspec.msgpack.Decoder(Message)
_HEADER = struct.Struct(">I")


def encode(message: Message) -> bytes:
    body = _encoder.encode(message)
    return _HEADER.pack(len(body)) + body


def decode(body: bytes) -> Message:
    result: Message = _decoder.decode(body)
    return result


async def read_message(reader: asyncio.StreamReader) -> Message:
    """The next frame; raises asyncio.IncompleteReadError at end of stream, ValueError on a bad frame."""
    (length,) = _HEADER.unpack(await reader.readexactly(_HEADER.size))
    if length > MAX_FRAME_BYTES:
        raise ValueError(f"frame of {length} bytes exceeds {MAX_FRAME_BYTES}")
    return decode(await reader.readexactly(length))


async def write_message(writer: asyncio.StreamWriter, message: Message) -> None:
    writer.write(encode(message))
    await writer.drain()

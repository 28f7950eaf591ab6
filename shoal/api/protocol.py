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

Across hosts the stream is TLS to the manager's cluster port (2377). Before a node has a
certificate it may only ask, on a connection without a client certificate:
  node -> GetRootCA()             manager -> RootCA(cert_pem)      (the node checks it against
                                                                    the token's digest, then
                                                                    reconnects pinned to it)
  node -> IssueCertificate(...)   manager -> IssuedCertificate(...) or SessionError
With a client certificate (the node's identity is its certificate's CN):
  node -> RenewCertificate(csr)   manager -> IssuedCertificate(...) (certificate renewal)
  node -> Register(...)           the dispatcher session above
Overlay networking (issue 4): after Assignments, and again whenever it changes, the manager sends
  manager -> NetworkState(...)   the node's whole network view (full state each time; small)
Logs of a task on a remote node (manager asks the node over its session):
  manager -> LogsRequest(id, task_id, tail, since_ns, follow)
  agent -> LogsChunk(id, lines, done)   ... until done; manager -> LogsCancel(id) stops a follow
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


class GetRootCA(msgspec.Struct, tag="get_root_ca", frozen=True, kw_only=True):
    pass


class RootCA(msgspec.Struct, tag="root_ca", frozen=True, kw_only=True):
    cert_pem: str


class IssueCertificate(msgspec.Struct, tag="issue_cert", frozen=True, kw_only=True):
    """A joining node's request: its CSR (public key; the subject is chosen by the manager), the
    join token, and what the node object needs."""

    csr_pem: str
    token: str
    hostname: str
    addr: str = ""  # the node's advertised address


class RenewCertificate(msgspec.Struct, tag="renew_cert", frozen=True, kw_only=True):
    csr_pem: str


class IssuedCertificate(msgspec.Struct, tag="issued_cert", frozen=True, kw_only=True):
    node_id: str
    role: str  # worker | manager
    cert_pem: str  # the node certificate (CN = node ID, OU = swarm-worker|swarm-manager, O = cluster ID)
    root_pem: str


class LogsRequest(msgspec.Struct, tag="logs_request", frozen=True, kw_only=True):
    request_id: int
    task_id: str
    tail: int | None = None
    since_ns: int | None = None  # unix time in ns
    follow: bool = False


class WireLogLine(msgspec.Struct, frozen=True, array_like=True):
    timestamp_ns: int
    stream: int
    message: bytes


class LogsChunk(msgspec.Struct, tag="logs_chunk", frozen=True, kw_only=True):
    request_id: int
    lines: list[WireLogLine]
    done: bool = False
    error: str = ""


class LogsCancel(msgspec.Struct, tag="logs_cancel", frozen=True, kw_only=True):
    request_id: int


class OverlayNetwork(msgspec.Struct, frozen=True, kw_only=True):
    network_id: str
    name: str
    vni: int
    subnet: str  # "10.0.1.0/24"
    gateway: str  # "10.0.1.1" (never a task's address)
    ingress: bool = False
    internal: bool = False


class PublishedPortSpec(msgspec.Struct, frozen=True, kw_only=True):
    protocol: str  # tcp | udp
    target: int
    published: int
    mode: str  # ingress | host


class TaskEndpoint(msgspec.Struct, frozen=True, kw_only=True):
    task_id: str
    node_id: str
    address: str  # on this network, without prefix length
    aliases: list[str] = []
    # In DNS and load balancing only while running and its desired state is running (so a task
    # being stopped leaves the backend set first: it is drained before its container stops).
    serving: bool = False


class ServiceEndpoints(msgspec.Struct, frozen=True, kw_only=True):
    """One service on one network."""

    service_id: str
    name: str
    network_id: str
    endpoint_mode: str  # vip | dnsrr
    vip: str = ""  # without prefix length; "" in dnsrr mode
    aliases: list[str] = []
    ports: list[PublishedPortSpec] = []
    tasks: list[TaskEndpoint] = []


class NetworkState(msgspec.Struct, tag="network_state", frozen=True, kw_only=True):
    node_addr: str  # this node's underlay address (VXLAN local)
    ingress_addr: str = ""  # this node's own address on the ingress network ("" if none)
    networks: list[OverlayNetwork] = []  # networks with a task on this node, plus ingress when used
    peers: dict[str, list[str]] = {}  # network_id -> underlay addresses of the other nodes on it
    ingress_hosts: list[str] = []  # every node's ingress address, in one cluster-wide order
    services: list[ServiceEndpoints] = []  # services on the networks above
    # Services publishing host-mode ports with an active task on this node, whatever their
    # networks (network_id "", no VIP; tasks: this node's only, address "").
    host_ports: list[ServiceEndpoints] = []


Message = (Register | Registered | Heartbeat | StatusBatch | Assignments | SessionError | GetRootCA
           | RootCA | IssueCertificate | RenewCertificate | IssuedCertificate | LogsRequest | LogsChunk
           | LogsCancel | NetworkState)

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

"""The embedded DNS resolver: 127.0.0.11:53 (UDP and TCP) inside every container, as Docker.

`DnsServer` runs on shoald's asyncio loop. `add_container` binds the two sockets inside the
container's network namespace (`netns_socket.py`) while the daemon stays in the host's, and
serves them with loop endpoints; each container's queries are answered from `DnsRecords` for the
networks that container is attached to (`dnsrecords.py` has the names and TTLs).

Names the records do not know are forwarded to `upstreams` (the host's resolvers, see
`host_upstreams`), over UDP, to all of them at once: the first answer that matches the query wins,
and after `forward_timeout` (2 s) the container gets SERVFAIL. The forwarding sockets are made in
shoald's own namespace, where the host's resolvers are reachable (even 127.0.0.53); a container
has no route off its networks. With no upstreams, unknown names get NXDOMAIN (lab hosts have none).

Answers: A records only. A known name asked for AAAA or any other type gets NOERROR with no
records; several addresses come in random order (round robin for dnsrr and `tasks.`). UDP replies
longer than 512 bytes (or the query's EDNS size, at most 4096) are sent truncated (TC) so the
client asks again over TCP; TCP answers are capped at `MAX_ANSWERS`. Packets that do not parse,
responses, and queries with no question are dropped; other opcodes get NOTIMP. No PTR records yet.
"""

from __future__ import annotations

import asyncio
import contextlib
import ipaddress
import logging
import random
import socket
import struct
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path

# dnslib ships no type hints
from dnslib import EDNS0, OPCODE, QTYPE, RCODE, RR, A, DNSError, DNSRecord

from shoal.agent.network.dnsrecords import DnsRecords
from shoal.agent.network.netns_socket import SocketSpec, open_sockets_in_netns

log = logging.getLogger(__name__)

DNS_ADDRESS = "127.0.0.11"
DNS_PORT = 53
UDP_LIMIT = 512
EDNS_LIMIT = 4096
MAX_ANSWERS = 1024  # 16 bytes each with name compression: fits TCP's 64 KiB
MAX_FORWARDS = 256  # queries in flight upstream at once, all containers together
TCP_IDLE = 10.0  # seconds a TCP client may stay silent


class Forward:
    """Returned by `respond` when the query should go to the upstream resolvers."""


FORWARD = Forward()


def resolv_conf(search: Iterable[str] | None = None, options: Iterable[str] = ("ndots:0",)) -> str:
    """A container's /etc/resolv.conf pointing at the embedded resolver (swarm uses ndots:0)."""
    lines = [f"nameserver {DNS_ADDRESS}"]
    domains = [d for d in (search or ()) if d]
    if domains:
        lines.append("search " + " ".join(domains))
    opts = [o for o in options if o]
    if opts:
        lines.append("options " + " ".join(opts))
    return "\n".join(lines) + "\n"


def parse_upstream(text: str) -> tuple[str, int]:
    """`1.2.3.4`, `1.2.3.4:5353`, `::1` or `[::1]:5353` -> (host, port)."""
    text = text.strip()
    if text.startswith("["):
        host, _, rest = text[1:].partition("]")
        port = int(rest[1:]) if rest.startswith(":") else DNS_PORT
    elif text.count(":") == 1:
        host, _, port_text = text.partition(":")
        port = int(port_text)
    else:
        host, port = text, DNS_PORT
    ipaddress.ip_address(host)  # ValueError for anything but an address
    if not 0 < port < 65536:
        raise ValueError(f"bad port in upstream {text!r}")
    return host, port


def host_upstreams(path: str | Path = "/etc/resolv.conf") -> list[str]:
    """The `nameserver` lines of the host's resolv.conf, or [] when it has none (or no file)."""
    try:
        text = Path(path).read_text()
    except OSError:
        return []
    found = []
    for line in text.splitlines():
        parts = line.split()
        if len(parts) >= 2 and parts[0] == "nameserver":
            with contextlib.suppress(ValueError):
                parse_upstream(parts[1].split("%")[0])
                found.append(parts[1].split("%")[0])
    return found


def _size_limit(query: DNSRecord) -> int:
    for rr in query.ar:
        if rr.rtype == QTYPE.OPT:
            return max(UDP_LIMIT, min(int(rr.rclass), EDNS_LIMIT))
    return UDP_LIMIT


def _pack(reply: DNSRecord, limit: int | None) -> bytes:
    data = bytes(reply.pack())
    if limit is not None and len(data) > limit:
        reply.rr = []
        reply.header.tc = 1
        data = bytes(reply.pack())
    return data


def _reply(query: DNSRecord, rcode: int, *, aa: bool) -> DNSRecord:
    reply = query.reply(ra=1, aa=int(aa))
    reply.header.rcode = rcode
    if any(rr.rtype == QTYPE.OPT for rr in query.ar):
        reply.add_ar(EDNS0(udp_len=EDNS_LIMIT))
    return reply


def respond(records: DnsRecords, networks: set[str], data: bytes, *, can_forward: bool,
            tcp: bool = False) -> bytes | Forward | None:
    """The reply to one query packet from a container on `networks`.

    None: drop it (not a query). FORWARD: unknown name and `can_forward`.
    """
    try:
        query = DNSRecord.parse(data)
    except (DNSError, ValueError, IndexError, struct.error, UnicodeError):
        return None
    if query.header.qr or len(query.questions) != 1:
        return None
    limit = None if tcp else _size_limit(query)
    if query.header.opcode != OPCODE.QUERY:
        return _pack(_reply(query, RCODE.NOTIMP, aa=False), limit)
    question = query.questions[0]
    answer = records.lookup(networks, str(question.qname))
    if not answer.authoritative:
        if can_forward:
            return FORWARD
        return _pack(_reply(query, RCODE.NXDOMAIN, aa=False), limit)
    reply = _reply(query, RCODE.NOERROR, aa=True)
    if question.qtype in (QTYPE.A, QTYPE.ANY):
        addresses = list(answer.addresses)
        random.shuffle(addresses)
        for address in addresses[:MAX_ANSWERS]:
            reply.add_answer(RR(question.qname, QTYPE.A, rdata=A(address), ttl=answer.ttl))
    return _pack(reply, limit)


class _UpstreamProtocol(asyncio.DatagramProtocol):
    def __init__(self, done: asyncio.Future[bytes | None], query: DNSRecord, qid: int,
                 pending: list[int]) -> None:
        self.done, self.query, self.qid, self.pending = done, query, qid, pending

    def datagram_received(self, data: bytes, addr: tuple[str | bytes, int]) -> None:
        if self.done.done() or len(data) < 12 or struct.unpack("!H", data[:2])[0] != self.qid:
            return
        try:
            reply = DNSRecord.parse(data)
        except (DNSError, ValueError, IndexError, struct.error, UnicodeError):
            return
        if reply.header.qr and reply.questions == self.query.questions:
            self.done.set_result(data)

    def error_received(self, exc: Exception) -> None:  # e.g. ICMP port unreachable
        self.pending[0] -= 1
        if self.pending[0] <= 0 and not self.done.done():
            self.done.set_result(None)


async def forward(upstreams: list[tuple[str, int]], data: bytes, timeout: float) -> bytes | None:
    """Send the query to every upstream; the first matching response (with the asker's id)."""
    query = DNSRecord.parse(data)
    loop = asyncio.get_running_loop()
    qid = random.randrange(1 << 16)  # a fresh id: an off-path guess must match it
    packet = struct.pack("!H", qid) + data[2:]
    done: asyncio.Future[bytes | None] = loop.create_future()
    pending = [len(upstreams)]
    transports: list[asyncio.DatagramTransport] = []
    try:
        for host, port in upstreams:
            family = socket.AF_INET6 if ":" in host else socket.AF_INET
            try:
                transport, _ = await loop.create_datagram_endpoint(
                    lambda: _UpstreamProtocol(done, query, qid, pending),
                    remote_addr=(host, port), family=family)
            except OSError:  # e.g. no route to that upstream
                pending[0] -= 1
                continue
            transports.append(transport)
            transport.sendto(packet)
        if not transports:
            return None
        async with asyncio.timeout(timeout):
            response = await done
    except TimeoutError:
        return None
    finally:
        for transport in transports:
            transport.close()
    return None if response is None else data[:2] + response[2:]


class _UdpProtocol(asyncio.DatagramProtocol):
    def __init__(self, server: DnsServer, container: _Container) -> None:
        self.server, self.container = server, container
        self.closed: asyncio.Future[None] = asyncio.get_running_loop().create_future()

    def connection_lost(self, exc: Exception | None) -> None:
        if not self.closed.done():
            self.closed.set_result(None)

    def datagram_received(self, data: bytes, addr: tuple[str | bytes, int]) -> None:
        self.server._on_udp(self.container, data, addr)

    def error_received(self, exc: Exception) -> None:
        pass  # a client that went away


@dataclass
class _Container:
    task_id: str
    networks: set[str]
    udp: asyncio.DatagramTransport | None = None
    udp_protocol: _UdpProtocol | None = None
    tcp: asyncio.Server | None = None
    jobs: set[asyncio.Task[None]] = field(default_factory=set)
    writers: set[asyncio.StreamWriter] = field(default_factory=set)


class DnsServer:
    """The embedded resolver for the containers of one host; use on the running loop."""

    def __init__(self, records: DnsRecords, upstreams: list[str] | None = None, *,
                 forward_timeout: float = 2.0, address: str = DNS_ADDRESS,
                 port: int = DNS_PORT) -> None:
        self.records = records
        self.upstreams = [parse_upstream(u) for u in upstreams or []]
        self.forward_timeout = forward_timeout
        self.address, self.port = address, port
        self._containers: dict[str, _Container] = {}
        self._forwarding = 0

    def containers(self) -> set[str]:
        return set(self._containers)

    async def add_container(self, task_id: str, netns_path: str | Path, networks: set[str]) -> None:
        """Serve `address:port` inside the namespace at `netns_path`; again replaces the old one."""
        await self.remove_container(task_id)
        udp_sock, tcp_sock = await open_sockets_in_netns(str(netns_path), [
            SocketSpec(socket.SOCK_DGRAM, self.address, self.port),
            SocketSpec(socket.SOCK_STREAM, self.address, self.port)])
        container = _Container(task_id, set(networks))
        loop = asyncio.get_running_loop()
        try:
            container.udp, container.udp_protocol = await loop.create_datagram_endpoint(
                lambda: _UdpProtocol(self, container), sock=udp_sock)
            container.tcp = await asyncio.start_server(
                lambda r, w: self._tcp_client(container, r, w), sock=tcp_sock)
        except BaseException:
            udp_sock.close()
            tcp_sock.close()
            await self._close(container)
            raise
        self._containers[task_id] = container

    def set_networks(self, task_id: str, networks: set[str]) -> None:
        """The container's attachments changed; KeyError if it is not served."""
        self._containers[task_id].networks = set(networks)

    async def remove_container(self, task_id: str) -> None:
        """Stop serving the container: its sockets close and its queries in flight are dropped."""
        container = self._containers.pop(task_id, None)
        if container is not None:
            await self._close(container)

    async def close(self) -> None:
        for task_id in list(self._containers):
            await self.remove_container(task_id)

    async def _close(self, container: _Container) -> None:
        if container.udp is not None:
            container.udp.close()  # the socket itself closes on the loop's next turn
            if container.udp_protocol is not None:
                await container.udp_protocol.closed  # so the address is free on return
        if container.tcp is not None:
            container.tcp.close()
        for writer in list(container.writers):
            writer.close()
        jobs = list(container.jobs)
        for job in jobs:
            job.cancel()
        await asyncio.gather(*jobs, return_exceptions=True)

    def _respond(self, container: _Container, data: bytes, tcp: bool) -> bytes | Forward | None:
        can_forward = bool(self.upstreams) and self._forwarding < MAX_FORWARDS
        try:
            return respond(self.records, container.networks, data, can_forward=can_forward, tcp=tcp)
        except Exception:  # a packet dnslib chokes on must never take the resolver down
            log.exception("dns: dropped a query from task %s", container.task_id)
            return None

    async def _forward(self, data: bytes, tcp: bool) -> bytes:
        self._forwarding += 1
        try:
            answer = await forward(self.upstreams, data, self.forward_timeout)
        finally:
            self._forwarding -= 1
        if answer is not None:
            return answer
        query = DNSRecord.parse(data)  # it parsed once already: respond() said FORWARD
        return _pack(_reply(query, RCODE.SERVFAIL, aa=False), None if tcp else _size_limit(query))

    def _on_udp(self, container: _Container, data: bytes, addr: tuple[str | bytes, int]) -> None:
        reply = self._respond(container, data, tcp=False)
        if isinstance(reply, Forward):
            job = asyncio.ensure_future(self._udp_forward(container, data, addr))
            container.jobs.add(job)
            job.add_done_callback(container.jobs.discard)
        elif reply is not None and container.udp is not None:
            container.udp.sendto(reply, addr)

    async def _udp_forward(self, container: _Container, data: bytes,
                           addr: tuple[str | bytes, int]) -> None:
        reply = await self._forward(data, tcp=False)
        if container.udp is not None and not container.udp.is_closing():
            container.udp.sendto(reply, addr)

    async def _tcp_client(self, container: _Container, reader: asyncio.StreamReader,
                          writer: asyncio.StreamWriter) -> None:
        container.writers.add(writer)
        try:
            while True:
                async with asyncio.timeout(TCP_IDLE):
                    (size,) = struct.unpack("!H", await reader.readexactly(2))
                    data = await reader.readexactly(size)
                reply = self._respond(container, data, tcp=True)
                if isinstance(reply, Forward):
                    reply = await self._forward(data, tcp=True)
                elif reply is None:
                    break  # not DNS: hang up
                writer.write(struct.pack("!H", len(reply)) + reply)
                await writer.drain()
        except (asyncio.IncompleteReadError, TimeoutError, OSError, struct.error):
            pass
        finally:
            container.writers.discard(writer)
            writer.close()

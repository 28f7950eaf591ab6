"""Integration tests of the embedded DNS resolver on real network namespaces (root, iproute2).

Each test makes throwaway namespaces `shoal-dnst-<random>-<x>` with only `lo` up, serves
127.0.0.11:53 in them from this process (which never leaves its own namespace), and asks from
inside with a small dnslib client run by `ip netns exec`. The fake upstream resolver listens on
127.0.0.1 in this process's namespace: a container cannot reach it, so an answer from it proves
that forwarding leaves from the daemon's namespace. Namespaces are deleted by name even when a
test fails. No traffic leaves loopback.
"""

from __future__ import annotations

import asyncio
import json
import os
import shutil
import socket
import subprocess
import sys
from collections.abc import Awaitable, Callable, Iterator
from typing import Any, cast

import pytest
from dnslib import QTYPE, RCODE, RR, A, DNSRecord  # type: ignore[import-untyped]

from shoal.agent.network.dns import DnsServer
from shoal.agent.network.dnsrecords import DnsRecords

pytestmark = [
    pytest.mark.integration,
    pytest.mark.skipif(os.geteuid() != 0 or shutil.which("ip") is None, reason="needs root and ip"),
]

CLIENT = r"""
import json, socket, sys
from dnslib import DNSRecord, RCODE
name, qtype, proto, junk = sys.argv[1:5]
if junk == "junk":  # garbage first, on both transports; the server must survive it
    u = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    for blob in (b"", b"\x00", b"\xff" * 300, b"\x12\x34\x01\x00\x00\x01" + b"\xff" * 20):
        u.sendto(blob, ("127.0.0.11", 53))
    t = socket.create_connection(("127.0.0.11", 53), timeout=1)
    t.sendall(b"\x00\x05hello\x00\x01")
    t.close()
q = DNSRecord.question(name, qtype)
try:
    raw = q.send("127.0.0.11", 53, tcp=proto == "tcp", timeout=1.0)
except OSError as exc:
    print(json.dumps({"error": type(exc).__name__}))
    sys.exit(0)
r = DNSRecord.parse(raw)
print(json.dumps({"rcode": RCODE.get(r.header.rcode), "aa": r.header.aa, "tc": r.header.tc,
                  "id_ok": r.header.id == q.header.id, "ttls": sorted({rr.ttl for rr in r.rr}),
                  "addresses": sorted(str(rr.rdata) for rr in r.rr if rr.rtype == 1)}))
"""


def _ip(*args: str, check: bool = True) -> None:
    subprocess.run(["ip", *args], check=check, capture_output=True)


@pytest.fixture
def netns() -> Iterator[Callable[[str, bool], str]]:
    """A factory of namespaces (lo up unless told); all deleted at the end."""
    tag = os.urandom(3).hex()
    made: list[str] = []

    def make(suffix: str, lo_up: bool = True) -> str:
        name = f"shoal-dnst-{tag}-{suffix}"
        made.append(name)
        _ip("netns", "add", name)
        if lo_up:
            _ip("-n", name, "link", "set", "lo", "up")
        return name

    try:
        yield make
    finally:
        for name in made:
            _ip("netns", "del", name, check=False)


async def query(ns: str, name: str, qtype: str = "A", *, tcp: bool = False,
                junk: bool = False) -> dict[str, Any]:
    proc = await asyncio.create_subprocess_exec(
        "ip", "netns", "exec", ns, sys.executable, "-c", CLIENT, name, qtype,
        "tcp" if tcp else "udp", "junk" if junk else "-",
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE)
    out, err = await proc.communicate()
    assert proc.returncode == 0, err.decode()
    result: dict[str, Any] = json.loads(out)
    return result


def records() -> DnsRecords:
    r = DnsRecords()
    r.set_service("n1", "web", vip="10.0.1.2/24", endpoint_mode="vip", aliases=["www"])
    r.set_task("n1", "web", "t1", "10.0.1.3/24", running=True, aliases=["web.1.t1"])
    r.set_task("n1", "web", "t2", "10.0.1.4/24", running=True)
    r.set_task("n1", "web", "t3", "10.0.1.5/24", running=False)
    r.set_service("n2", "db", vip=None, endpoint_mode="dnsrr")
    r.set_task("n2", "db", "d1", "10.0.2.3/24", running=True)
    r.set_task("n2", "db", "d2", "10.0.2.4/24", running=True)
    return r


def serve(server: DnsServer, body: Callable[[], Awaitable[None]]) -> None:
    async def main() -> None:
        try:
            await body()
        finally:
            await server.close()
    asyncio.run(main())


def own_netns() -> str:
    return os.readlink("/proc/thread-self/ns/net")


def test_services_tasks_and_isolation(netns: Callable[[str, bool], str]) -> None:
    a, b = netns("a", True), netns("b", True)
    recs = records()
    server = DnsServer(recs)
    before = own_netns()

    async def body() -> None:
        await server.add_container("task-a", f"/run/netns/{a}", {"n1"})
        await server.add_container("task-b", f"/run/netns/{b}", {"n2"})
        assert own_netns() == before  # the daemon never moved
        web = await query(a, "web")
        assert (web["rcode"], web["addresses"], web["aa"], web["id_ok"]) == (
            "NOERROR", ["10.0.1.2"], 1, True)
        assert web["ttls"] == [600]
        assert (await query(a, "WWW."))["addresses"] == ["10.0.1.2"]
        assert (await query(a, "tasks.web"))["addresses"] == ["10.0.1.3", "10.0.1.4"]
        assert (await query(a, "tasks.web", tcp=True))["addresses"] == ["10.0.1.3", "10.0.1.4"]
        assert (await query(a, "web.1.t1"))["addresses"] == ["10.0.1.3"]
        aaaa = await query(a, "web", "AAAA")
        assert (aaaa["rcode"], aaaa["addresses"]) == ("NOERROR", [])
        assert (await query(a, "db"))["rcode"] == "NXDOMAIN"  # n2 is not attached to a
        assert (await query(a, "nothing.example"))["rcode"] == "NXDOMAIN"  # no upstream
        db = await query(b, "db")
        assert (db["rcode"], db["addresses"]) == ("NOERROR", ["10.0.2.3", "10.0.2.4"])
        assert (await query(b, "web"))["rcode"] == "NXDOMAIN"
        # changes to the records are live; attachments too
        recs.set_task_running("n1", "t3", True)
        recs.remove_task("n1", "t1")
        assert (await query(a, "tasks.web"))["addresses"] == ["10.0.1.4", "10.0.1.5"]
        server.set_networks("task-b", {"n1", "n2"})
        assert (await query(b, "web"))["addresses"] == ["10.0.1.2"]

    serve(server, body)


def test_malformed_packets_are_ignored(netns: Callable[[str, bool], str]) -> None:
    a = netns("a", True)
    server = DnsServer(records())

    async def body() -> None:
        await server.add_container("task-a", f"/run/netns/{a}", {"n1"})
        answer = await query(a, "web", junk=True)
        assert (answer["rcode"], answer["addresses"]) == ("NOERROR", ["10.0.1.2"])

    serve(server, body)


class FakeUpstream(asyncio.DatagramProtocol):
    """Answers example.test with 192.0.2.1, everything else NXDOMAIN; remembers what it got."""

    def __init__(self) -> None:
        self.asked: list[str] = []
        self.transport: asyncio.DatagramTransport | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = cast(asyncio.DatagramTransport, transport)

    def datagram_received(self, data: bytes, addr: tuple[str | bytes, int]) -> None:
        q = DNSRecord.parse(data)
        name = str(q.q.qname).rstrip(".")
        self.asked.append(name)
        reply = q.reply(ra=1, aa=0)
        if name == "example.test":
            reply.add_answer(RR(q.q.qname, QTYPE.A, rdata=A("192.0.2.1"), ttl=42))
        else:
            reply.header.rcode = RCODE.NXDOMAIN
        assert self.transport is not None
        self.transport.sendto(reply.pack(), addr)


def test_unknown_names_are_forwarded_from_the_daemon_namespace(
        netns: Callable[[str, bool], str]) -> None:
    a = netns("a", True)

    async def body() -> None:
        loop = asyncio.get_running_loop()
        transport, upstream = await loop.create_datagram_endpoint(
            FakeUpstream, local_addr=("127.0.0.1", 0))
        port = transport.get_extra_info("sockname")[1]
        server = DnsServer(records(), upstreams=[f"127.0.0.1:{port}"])
        try:
            await server.add_container("task-a", f"/run/netns/{a}", {"n1"})
            ext = await query(a, "example.test")
            assert (ext["rcode"], ext["addresses"], ext["aa"], ext["ttls"], ext["id_ok"]) == (
                "NOERROR", ["192.0.2.1"], 0, [42], True)
            assert (await query(a, "example.test", tcp=True))["addresses"] == ["192.0.2.1"]
            assert (await query(a, "nope.test"))["rcode"] == "NXDOMAIN"
            assert (await query(a, "tasks.web"))["addresses"] == ["10.0.1.3", "10.0.1.4"]
            assert upstream.asked == ["example.test", "example.test", "nope.test"]
        finally:
            await server.close()
            transport.close()

    asyncio.run(body())


def test_dead_upstream_gives_servfail(netns: Callable[[str, bool], str]) -> None:
    a = netns("a", True)
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]  # closed again below: nothing listens there
    server = DnsServer(records(), upstreams=[f"127.0.0.1:{port}"], forward_timeout=0.5)

    async def body() -> None:
        await server.add_container("task-a", f"/run/netns/{a}", {"n1"})
        assert (await query(a, "example.test"))["rcode"] == "SERVFAIL"
        assert (await query(a, "web"))["addresses"] == ["10.0.1.2"]

    serve(server, body)


def test_remove_container_closes_its_socket(netns: Callable[[str, bool], str]) -> None:
    a = netns("a", True)
    server = DnsServer(records())

    async def body() -> None:
        path = f"/run/netns/{a}"
        await server.add_container("task-a", path, {"n1"})
        assert (await query(a, "web"))["rcode"] == "NOERROR"
        await server.remove_container("task-a")
        assert server.containers() == set()
        gone = await query(a, "web")
        assert gone.get("error") in ("TimeoutError", "ConnectionRefusedError"), gone
        await server.add_container("task-a", path, {"n1"})  # the address is free again
        assert (await query(a, "web"))["rcode"] == "NOERROR"
        await server.add_container("task-a", path, {"n1"})  # re-adding replaces
        assert (await query(a, "web", tcp=True))["rcode"] == "NOERROR"

    serve(server, body)


def test_add_container_fails_cleanly(netns: Callable[[str, bool], str]) -> None:
    a = netns("a", True)
    server = DnsServer(records())
    before = own_netns()

    async def body() -> None:
        with pytest.raises(FileNotFoundError):
            await server.add_container("task-x", f"/run/netns/{a}-missing", {"n1"})
        with pytest.raises(OSError):  # not a namespace: setns refuses it
            await server.add_container("task-y", "/proc/self/status", {"n1"})
        assert server.containers() == set() and own_netns() == before
        await server.add_container("task-a", f"/run/netns/{a}", {"n1"})  # nothing was left bound
        assert (await query(a, "web"))["rcode"] == "NOERROR"

    serve(server, body)

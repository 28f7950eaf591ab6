"""Unit tests of the embedded resolver's records (DnsRecords) and its wire replies (dns.respond).

Pure: no sockets, no namespaces. The resolver on real namespaces is tested in
tests/integration/test_dns_resolver.py.
"""

from __future__ import annotations

import random
from pathlib import Path

import pytest
from dnslib import EDNS0, OPCODE, QTYPE, RCODE, DNSRecord  # type: ignore[import-untyped]

from shoal.agent.network.dns import (
    FORWARD,
    MAX_ANSWERS,
    host_upstreams,
    parse_upstream,
    resolv_conf,
    respond,
)
from shoal.agent.network.dnsrecords import TASKS_TTL, VIP_TTL, Answer, DnsRecords

N1, N2 = "net1", "net2"


def table() -> DnsRecords:
    r = DnsRecords()
    r.set_service(N1, "web", vip="10.0.1.2/24", endpoint_mode="vip", aliases=["www"])
    r.set_task(N1, "web", "t1", "10.0.1.3/24", running=True, aliases=["web.1.t1"])
    r.set_task(N1, "web", "t2", "10.0.1.4", running=True, aliases=["web.2.t2"])
    r.set_task(N1, "web", "t3", "10.0.1.5", running=False, aliases=["web.3.t3"])
    r.set_service(N2, "db", vip=None, endpoint_mode="dnsrr", aliases=["database"])
    r.set_task(N2, "db", "d1", "10.0.2.3", running=True)
    r.set_task(N2, "db", "d2", "10.0.2.4", running=True)
    return r


def addrs(answer: Answer) -> set[str]:
    return set(answer.addresses)


def test_vip_service_resolves_to_its_vip_with_long_ttl() -> None:
    a = table().lookup({N1}, "web")
    assert a == Answer(("10.0.1.2",), nxdomain=False, authoritative=True, ttl=VIP_TTL)


def test_dnsrr_service_resolves_to_running_tasks() -> None:
    a = table().lookup({N2}, "db")
    assert addrs(a) == {"10.0.2.3", "10.0.2.4"}
    assert a.authoritative and not a.nxdomain and a.ttl == TASKS_TTL


def test_tasks_name_lists_only_running_tasks() -> None:
    assert addrs(table().lookup({N1}, "tasks.web")) == {"10.0.1.3", "10.0.1.4"}
    assert addrs(table().lookup({N2}, "tasks.db")) == {"10.0.2.3", "10.0.2.4"}


def test_service_aliases_resolve_like_the_service() -> None:
    r = table()
    assert addrs(r.lookup({N1}, "www")) == {"10.0.1.2"}
    assert addrs(r.lookup({N1}, "tasks.www")) == {"10.0.1.3", "10.0.1.4"}
    assert addrs(r.lookup({N2}, "database")) == {"10.0.2.3", "10.0.2.4"}


def test_task_alias_resolves_while_the_task_runs() -> None:
    r = table()
    assert addrs(r.lookup({N1}, "web.1.t1")) == {"10.0.1.3"}
    stopped = r.lookup({N1}, "web.3.t3")
    assert stopped.addresses == () and stopped.authoritative and not stopped.nxdomain


def test_running_flag_moves_a_task_in_and_out() -> None:
    r = table()
    r.set_task_running(N1, "t3", True)
    r.set_task_running(N1, "t1", False)
    assert addrs(r.lookup({N1}, "tasks.web")) == {"10.0.1.4", "10.0.1.5"}
    r.set_task_running(N1, "unknown", True)  # ignored
    assert addrs(r.lookup({N1}, "tasks.web")) == {"10.0.1.4", "10.0.1.5"}


def test_names_are_isolated_by_network() -> None:
    r = table()
    assert r.lookup({N1}, "db").nxdomain
    assert not r.lookup({N1}, "db").authoritative
    assert r.lookup({N2}, "tasks.web").nxdomain
    assert r.lookup(set(), "web").nxdomain
    both = {N1, N2}
    assert addrs(r.lookup(both, "web")) == {"10.0.1.2"}
    assert addrs(r.lookup(both, "db")) == {"10.0.2.3", "10.0.2.4"}


def test_same_service_on_two_networks_answers_from_first_network() -> None:
    r = DnsRecords()
    r.set_service("b", "web", vip="10.9.0.2")
    r.set_service("a", "web", vip="10.8.0.2")
    assert r.lookup({"a", "b"}, "web").addresses == ("10.8.0.2",)
    assert r.lookup({"b"}, "web").addresses == ("10.9.0.2",)


def test_case_insensitive_and_trailing_dot() -> None:
    r = table()
    for name in ("WEB", "web.", "Web.", "TASKS.Web.", "WWW"):
        assert r.lookup({N1}, name).authoritative, name
    assert r.lookup({N1}, ".").nxdomain
    assert r.lookup({N1}, "").nxdomain


def test_known_service_without_running_tasks_is_nodata_not_nxdomain() -> None:
    r = DnsRecords()
    r.set_service(N1, "idle", vip=None, endpoint_mode="dnsrr")
    r.set_service(N1, "novip", vip=None, endpoint_mode="vip")
    for name in ("idle", "tasks.idle", "novip"):
        a = r.lookup({N1}, name)
        assert a.addresses == () and a.authoritative and not a.nxdomain, name


def test_tasks_name_works_before_the_service_is_known() -> None:
    r = DnsRecords()
    r.set_task(N1, "web", "t1", "10.0.1.3", running=True)
    assert addrs(r.lookup({N1}, "tasks.web")) == {"10.0.1.3"}
    assert r.lookup({N1}, "web").nxdomain  # mode unknown until set_service


def test_removals() -> None:
    r = table()
    r.remove_task(N1, "t1")
    assert addrs(r.lookup({N1}, "tasks.web")) == {"10.0.1.4"}
    assert r.lookup({N1}, "web.1.t1").nxdomain
    r.remove_service(N1, "WEB")
    assert r.lookup({N1}, "web").nxdomain and r.lookup({N1}, "www").nxdomain
    assert addrs(r.lookup({N1}, "tasks.web")) == {"10.0.1.4"}  # tasks still stopping
    r.remove_task(N1, "t2")
    r.remove_task(N1, "t3")
    assert N1 not in r.networks()
    r.remove_network(N2)
    assert r.lookup({N2}, "db").nxdomain
    r.remove_task("nope", "x")
    r.remove_service("nope", "x")


def test_replacing_a_service_updates_aliases_and_mode() -> None:
    r = table()
    r.set_service(N1, "web", vip=None, endpoint_mode="dnsrr", aliases=["front"])
    assert r.lookup({N1}, "www").nxdomain
    assert addrs(r.lookup({N1}, "front")) == {"10.0.1.3", "10.0.1.4"}


def test_replacing_a_task_moves_its_address() -> None:
    r = table()
    r.set_task(N1, "web", "t1", "10.0.1.9", running=True)
    assert addrs(r.lookup({N1}, "tasks.web")) == {"10.0.1.9", "10.0.1.4"}
    assert r.lookup({N1}, "web.1.t1").nxdomain  # the new record has no alias


def test_shared_alias_survives_one_holder_leaving() -> None:
    r = DnsRecords()
    r.set_service(N1, "a", vip="10.0.0.2", aliases=["shared"])
    r.set_service(N1, "b", vip="10.0.0.3", aliases=["shared"])
    assert r.lookup({N1}, "shared").addresses == ("10.0.0.2",)
    r.remove_service(N1, "a")
    assert r.lookup({N1}, "shared").addresses == ("10.0.0.3",)


def test_bad_input_is_refused() -> None:
    r = DnsRecords()
    with pytest.raises(ValueError):
        r.set_service(N1, "web", vip="fe80::1")
    with pytest.raises(ValueError):
        r.set_service(N1, "web", vip=None, endpoint_mode="bogus")  # type: ignore[arg-type]
    with pytest.raises(ValueError):
        r.set_task(N1, "web", "t", "not-an-ip", running=True)
    with pytest.raises(ValueError):
        r.set_service(N1, ".", vip=None)


# -- wire replies ---------------------------------------------------------------------------------


def ask(name: str, qtype: str = "A", *, networks: set[str] | None = None, forward: bool = False,
        tcp: bool = False, edns: int | None = None) -> DNSRecord:
    q = DNSRecord.question(name, qtype)
    if edns:
        q.add_ar(EDNS0(udp_len=edns))
    raw = respond(table(), {N1} if networks is None else networks, q.pack(), can_forward=forward,
                  tcp=tcp)
    assert isinstance(raw, bytes)
    reply = DNSRecord.parse(raw)
    assert reply.header.id == q.header.id and reply.header.qr
    return reply


def test_wire_a_records() -> None:
    reply = ask("tasks.web")
    assert reply.header.rcode == RCODE.NOERROR and reply.header.aa
    assert {str(rr.rdata) for rr in reply.rr} == {"10.0.1.3", "10.0.1.4"}
    assert {rr.ttl for rr in reply.rr} == {TASKS_TTL}
    assert [str(rr.rdata) for rr in ask("web").rr] == ["10.0.1.2"]


def test_wire_aaaa_of_known_name_is_empty_noerror() -> None:
    for qtype in ("AAAA", "MX", "TXT"):
        reply = ask("web", qtype)
        assert reply.header.rcode == RCODE.NOERROR and reply.rr == [], qtype


def test_wire_unknown_name_nxdomain_or_forward() -> None:
    assert ask("example.com").header.rcode == RCODE.NXDOMAIN
    assert ask("db").header.rcode == RCODE.NXDOMAIN  # other network
    q = DNSRecord.question("example.com").pack()
    assert respond(table(), {N1}, q, can_forward=True) is FORWARD
    known = respond(table(), {N1}, DNSRecord.question("web").pack(), can_forward=True)
    assert isinstance(known, bytes)


def test_wire_garbage_is_dropped() -> None:
    q = DNSRecord.question("web").pack()
    for junk in (b"", b"\x00", b"\xff" * 11, q[:14], b"\x12\x34" + b"\xff" * 40,
                 DNSRecord.parse(q).reply().pack()):
        assert respond(table(), {N1}, junk, can_forward=False) is None


def test_wire_never_raises_on_mutated_packets() -> None:
    rng = random.Random(1234)
    seeds = [DNSRecord.question(n, t).pack() for n, t in
             (("web", "A"), ("tasks.web", "AAAA"), ("x" * 60 + ".example", "MX"))]
    records = table()
    for i in range(3000):
        packet = bytearray(rng.choice(seeds))
        for _ in range(rng.randint(1, 6)):
            packet[rng.randrange(len(packet))] = rng.randrange(256)
        if i % 3 == 0:
            packet = packet[:rng.randrange(len(packet) + 1)]
        if i % 7 == 0:
            packet += rng.randbytes(rng.randrange(40))
        for tcp in (False, True):
            reply = respond(records, {N1}, bytes(packet), can_forward=i % 2 == 0, tcp=tcp)
            assert reply is None or reply is FORWARD or isinstance(reply, bytes)


def test_wire_other_opcode_is_notimp() -> None:
    q = DNSRecord.question("web")
    q.header.opcode = OPCODE.UPDATE
    raw = respond(table(), {N1}, q.pack(), can_forward=True)
    assert isinstance(raw, bytes) and DNSRecord.parse(raw).header.rcode == RCODE.NOTIMP


def big_table() -> DnsRecords:
    r = DnsRecords()
    r.set_service(N1, "big", vip=None, endpoint_mode="dnsrr")
    for i in range(2000):
        r.set_task(N1, "big", f"t{i}", f"10.1.{i // 250}.{i % 250 + 1}", running=True)
    return r


def test_wire_large_answers_truncate_over_udp_and_cap_over_tcp() -> None:
    q = DNSRecord.question("tasks.big")
    udp = respond(big_table(), {N1}, q.pack(), can_forward=False)
    assert isinstance(udp, bytes) and len(udp) <= 512
    assert DNSRecord.parse(udp).header.tc == 1
    tcp = respond(big_table(), {N1}, q.pack(), can_forward=False, tcp=True)
    assert isinstance(tcp, bytes) and len(tcp) < 65536
    assert len(DNSRecord.parse(tcp).rr) == MAX_ANSWERS


def test_wire_edns_allows_larger_udp_replies() -> None:
    r = DnsRecords()
    r.set_service(N1, "mid", vip=None, endpoint_mode="dnsrr")
    for i in range(60):  # ~1000 bytes: over 512, under 1232
        r.set_task(N1, "mid", f"t{i}", f"10.1.0.{i + 1}", running=True)
    q = DNSRecord.question("mid")
    q.add_ar(EDNS0(udp_len=1232))
    raw = respond(r, {N1}, q.pack(), can_forward=False)
    assert isinstance(raw, bytes) and 512 < len(raw) <= 1232
    reply = DNSRecord.parse(raw)
    assert not reply.header.tc and len(reply.rr) == 60
    assert any(rr.rtype == QTYPE.OPT for rr in reply.ar)


def test_resolv_conf() -> None:
    assert resolv_conf() == "nameserver 127.0.0.11\noptions ndots:0\n"
    assert resolv_conf(["a.example", "b.example"], options=()) == (
        "nameserver 127.0.0.11\nsearch a.example b.example\n")


def test_upstream_parsing(tmp_path: Path) -> None:
    assert parse_upstream("1.2.3.4") == ("1.2.3.4", 53)
    assert parse_upstream("127.0.0.1:5353") == ("127.0.0.1", 5353)
    assert parse_upstream("::1") == ("::1", 53)
    assert parse_upstream("[::1]:5353") == ("::1", 5353)
    for bad in ("name.example", "1.2.3.4:0", "1.2.3.4:x"):
        with pytest.raises(ValueError):
            parse_upstream(bad)
    conf = tmp_path / "resolv.conf"
    conf.write_text("# x\nnameserver 10.0.0.1\nnameserver fe80::1%eth0\nnameserver bogus\n"
                    "search example\n")
    assert host_upstreams(conf) == ["10.0.0.1", "fe80::1"]
    assert host_upstreams(tmp_path / "missing") == []

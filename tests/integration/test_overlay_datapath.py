"""The overlay data path as a library, on a topology of plain network namespaces.

A switch netns (bridge br0) joins three "host" netns by veth (`eth0`, an underlay /24 picked clear
of the root namespace's routes). On the hosts, overlay.py builds overlay A, overlay B (same subnet
as A, another VNI: L2 isolation) and the ingress network; "task" netns get veths into them and run
`busybox httpd` (index.html = the task's name, cgi-bin/ip prints name and REMOTE_ADDR, cgi-bin/slow
answers after 1 s, big.bin is 1 MiB). Every name starts with `shoal-dp-<random>-`; everything is
removed in the fixture's finally (namespaces by name, httpds by PID). Needs root, nft, busybox, curl.
"""

from __future__ import annotations

import asyncio
import hashlib
import ipaddress
import json
import os
import random
import secrets
import shutil
import subprocess
from collections.abc import Callable, Coroutine, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

from shoal.agent.network import lb, mesh, overlay
from shoal.hostnet import links, netns, procs, routes
from tests.daemon import wait_for

pytestmark = [pytest.mark.integration, pytest.mark.xdist_group("overlay-datapath")]

HOSTS = ("h1", "h2", "h3")
PUBLISHED = 8080


def arun(coro: Coroutine[Any, Any, Any]) -> Any:
    return asyncio.run(coro)


def wait_until(cond: Callable[[], bool], timeout: float = 10.0, what: str = "condition") -> None:
    wait_for(cond, timeout, what, interval=0.05)


def pick_subnets(count: int) -> list[ipaddress.IPv4Network]:
    """`count` random /24s of 10.210.0.0-10.249.255.0 clear of the root namespace's routes."""
    taken, found = routes.routed_networks(), list[ipaddress.IPv4Network]()
    while len(found) < count:
        net = ipaddress.IPv4Network(f"10.{random.randint(210, 249)}.{random.randint(0, 255)}.0/24")
        if not routes.overlaps_any(net, taken + found):
            found.append(net)
    return found


def host_ip(net: ipaddress.IPv4Network, i: int) -> str:
    return str(net.network_address + i)


@dataclass
class Topo:
    prefix: str
    underlay: ipaddress.IPv4Network
    sa: ipaddress.IPv4Network  # overlays A and B
    si: ipaddress.IPv4Network  # ingress
    vni_a: int
    vni_b: int
    vni_i: int
    root: Path
    pids: dict[str, int] = field(default_factory=dict)
    addr: dict[str, str] = field(default_factory=dict)  # task -> address on its network

    def ns(self, name: str) -> str:
        return f"{self.prefix}-{name}"

    def u(self, host: str) -> str:
        return host_ip(self.underlay, HOSTS.index(host) + 1)

    def ing(self, host: str) -> str:
        return host_ip(self.si, HOSTS.index(host) + 1)


def curl(t: Topo, where: str, url: str, max_time: float = 5.0) -> subprocess.CompletedProcess[str]:
    argv = netns.nsenter_argv(["curl", "-sS", "--max-time", str(max_time), url], netns=t.ns(where))
    return subprocess.run(argv, capture_output=True, text=True, timeout=max_time + 5)


def get(t: Topo, where: str, url: str) -> str:
    r = curl(t, where, url)
    assert r.returncode == 0, f"{where} -> {url}: rc {r.returncode} {r.stderr}"
    return r.stdout.strip()


def web_root(t: Topo, task: str) -> Path:
    d = t.root / task
    (d / "cgi-bin").mkdir(parents=True, exist_ok=True)
    (d / "index.html").write_text(task + "\n")
    (d / "big.bin").write_bytes(random.Random(task).randbytes(1 << 20))
    for name, body in (("ip", f'echo "{task} $REMOTE_ADDR"'), ("slow", f"sleep 1; echo {task}")):
        script = d / "cgi-bin" / name
        script.write_text(f"#!/bin/sh\necho Content-Type: text/plain\necho\n{body}\n")
        script.chmod(0o755)
    return d


def start_httpd(t: Topo, task: str) -> None:
    argv = netns.nsenter_argv(["busybox", "httpd", "-f", "-p", "80", "-h", str(web_root(t, task))],
                              netns=t.ns(task))
    t.pids[task] = subprocess.Popen(argv, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL).pid
    wait_until(lambda: curl(t, task, f"http://{t.addr[task]}/", 1).stdout.strip() == task, 5,
               f"httpd of {task}")


def stop_httpd(t: Topo, task: str) -> None:
    procs.stop(t.pids.pop(task), kill=True, timeout=5)


async def build_host(t: Topo, host: str) -> None:
    ns, me = t.ns(host), t.u(host)
    others = {t.u(h) for h in HOSTS if h != host}
    for _ in range(2):  # twice: everything is idempotent
        await overlay.ensure_network(t.vni_a, str(t.sa), None, me, netns=ns)
        await overlay.ensure_network(t.vni_b, str(t.sa), None, me, netns=ns)
        await overlay.ensure_network(t.vni_i, str(t.si), t.ing(host), me, netns=ns)
        for vni in (t.vni_a, t.vni_b, t.vni_i):
            await overlay.set_peers(vni, others, netns=ns)


async def add_task(t: Topo, task: str, host: str, vni: int, address: str, ifname: str = "eth1") -> None:
    netns.add(t.ns(task))
    net = t.si if vni == t.vni_i else t.sa
    await overlay.attach(t.ns(task), vni, ifname, f"{address}/{net.prefixlen}", host_netns=t.ns(host))
    t.addr[task] = address


# task -> (host, overlay, host index in the subnet)
TASKS = {"a1": ("h1", "a", 11), "a2": ("h2", "a", 12), "a3": ("h3", "a", 13), "ac": ("h1", "a", 20),
         "b1": ("h1", "b", 51), "b3": ("h3", "b", 53), "i2": ("h2", "i", 12), "i3": ("h3", "i", 13)}


def build(t: Topo) -> None:
    sw = t.ns("sw")
    netns.add(sw)
    links.add_bridge(sw, "br0")
    for i, h in enumerate(HOSTS, 1):
        netns.add(t.ns(h))
        links.add_veth_to_bridge(sw, f"p{i}", "br0", t.ns(h), "eth0")
        links.configure(t.ns(h), "eth0", f"{t.u(h)}/24")
    vnis = {"a": t.vni_a, "b": t.vni_b, "i": t.vni_i}

    async def plumb() -> None:
        for h in HOSTS:
            await build_host(t, h)
        for task, (host, net, idx) in TASKS.items():
            address = host_ip(t.si if net == "i" else t.sa, idx)
            await add_task(t, task, host, vnis[net], address)
        await overlay.attach(t.ns("a1"), t.vni_a, "eth1", f"{t.addr['a1']}/24",
                             host_netns=t.ns("h1"))  # again: idempotent
    arun(plumb())
    for task in TASKS:
        if task != "ac":
            start_httpd(t, task)


@pytest.fixture(scope="module")
def topo(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Topo]:
    if os.geteuid() != 0:
        pytest.skip("needs root")
    for tool in ("nft", "busybox", "curl", "bridge", "nsenter"):
        if shutil.which(tool) is None:
            pytest.skip(f"needs {tool}")
    underlay, sa, si = pick_subnets(3)
    vni = random.randint(1000, 1 << 23)
    t = Topo(f"shoal-dp-{secrets.token_hex(3)}", underlay, sa, si, vni, vni + 1, vni + 2,
             tmp_path_factory.mktemp("www"))
    try:
        build(t)
        yield t
    finally:
        for pid in list(t.pids.values()):
            procs.stop(pid, kill=True, timeout=5)
        for name in netns.list_names(t.prefix + "-"):
            netns.delete(name)


def test_names_fit_and_mtu_leaves_room_for_vxlan(topo: Topo) -> None:
    for name in (overlay.bridge_name(16777215), overlay.vxlan_name(16777215),
                 overlay.veth_name("shoal-abcdef01-" + "x" * 40, "eth9")):
        assert len(name) <= 15
    dev = json.loads(subprocess.run(["ip", "-n", topo.ns("h1"), "-d", "-j", "link", "show", "dev",
                                     overlay.vxlan_name(topo.vni_a)], capture_output=True,
                                    text=True, check=True).stdout)[0]
    assert dev["mtu"] == 1450 and dev["linkinfo"]["info_data"]["port"] == 4789
    assert dev["linkinfo"]["info_data"]["id"] == topo.vni_a
    task = json.loads(subprocess.run(["ip", "-n", topo.ns("a1"), "-j", "route", "show"],
                                     capture_output=True, text=True, check=True).stdout)
    assert [r["dst"] for r in task] == [str(topo.sa)]  # the subnet only: no default route


def test_tasks_on_one_overlay_reach_each_other_across_hosts(topo: Topo) -> None:
    for src, dst in (("a1", "a2"), ("a1", "a3"), ("a3", "a2"), ("b1", "b3")):
        assert get(topo, src, f"http://{topo.addr[dst]}/") == dst
    r = subprocess.run(netns.nsenter_argv(
        ["curl", "-sS", "--max-time", "10", f"http://{topo.addr['a3']}/big.bin"], netns=topo.ns("a1")),
        capture_output=True, timeout=15)
    assert r.returncode == 0, r.stderr
    want = (topo.root / "a3" / "big.bin").read_bytes()
    assert len(r.stdout) == 1 << 20 and hashlib.sha256(r.stdout).digest() == hashlib.sha256(want).digest()


def test_overlays_are_isolated(topo: Topo) -> None:
    # B's tasks share A's subnet: only the VNI separates them, and A's tasks cannot reach them.
    for src, dst in (("a1", "b3"), ("a1", "b1"), ("a2", "b3"), ("b1", "a3")):
        r = curl(topo, src, f"http://{topo.addr[dst]}/", max_time=1.5)
        assert r.returncode != 0, f"{src} reached {dst}: {r.stdout!r}"
    for h in HOSTS:  # no host forwards for a plain overlay
        out = subprocess.run(["ip", "netns", "exec", topo.ns(h), "sysctl", "-n", "net.ipv4.ip_forward"],
                             capture_output=True, text=True, check=True).stdout
        assert out.strip() == "0"


def flood(t: Topo, host: str, vni: int) -> set[str]:
    out = subprocess.run(["bridge", "-n", t.ns(host), "-j", "fdb", "show", "dev", overlay.vxlan_name(vni)],
                         capture_output=True, text=True, check=True).stdout
    return {e["dst"] for e in json.loads(out) if e["mac"] == "00:00:00:00:00:00"}


def test_set_peers_removing_a_host_cuts_it(topo: Topo) -> None:
    t, vni = topo, topo.vni_a

    def reaches() -> bool:
        return curl(t, "a1", f"http://{t.addr['a3']}/", max_time=1).returncode == 0
    try:
        arun(overlay.set_peers(vni, {t.u("h2")}, netns=t.ns("h1")))
        arun(overlay.set_peers(vni, {t.u("h1")}, netns=t.ns("h2")))
        arun(overlay.set_peers(vni, set(), netns=t.ns("h3")))
        assert flood(t, "h1", vni) == {t.u("h2")} and flood(t, "h3", vni) == set()
        assert not reaches()
        assert get(t, "a1", f"http://{t.addr['a2']}/") == "a2"  # the others still talk
    finally:
        for h in HOSTS:
            arun(overlay.set_peers(vni, {t.u(o) for o in HOSTS if o != h}, netns=t.ns(h)))
    assert flood(t, "h1", vni) == {t.u("h2"), t.u("h3")}
    wait_until(reaches, 10, "a1 to reach a3 again")


def vip_services(t: Topo, backends: list[str]) -> list[lb.VipService]:
    return [lb.VipService(host_ip(t.sa, 100), "tcp", 80, [t.addr[b] for b in backends])]


def test_vip_spreads_and_drains_without_failed_requests(topo: Topo) -> None:
    t, vip = topo, host_ip(topo.sa, 100)
    arun(lb.program_vips(t.ns("ac"), vip_services(t, ["a1", "a2", "a3"])))
    seen = [get(t, "ac", f"http://{vip}/") for _ in range(6)]
    assert sorted(seen) == ["a1", "a1", "a2", "a2", "a3", "a3"]
    slow = [subprocess.Popen(netns.nsenter_argv(["curl", "-sS", "--max-time", "5",
                                                 f"http://{vip}/cgi-bin/slow"], netns=t.ns("ac")),
                             stdout=subprocess.PIPE, text=True) for _ in range(6)]
    try:
        wait_until(lambda: connections(t, "a3") > 0, 3, "a request in flight on a3")
        arun(lb.program_vips(t.ns("ac"), vip_services(t, ["a1", "a2"])))  # drain a3
        after = [get(t, "ac", f"http://{vip}/") for _ in range(4)]
        answers = [p.communicate(timeout=8)[0].strip() for p in slow]
    finally:
        for p in slow:
            p.kill()
            p.wait()
    assert [p.returncode for p in slow] == [0] * 6 and "a3" in answers, answers
    assert set(after) == {"a1", "a2"}
    stop_httpd(t, "a3")  # the "container" stops after the drain
    try:
        assert all(get(t, "ac", f"http://{vip}/") in ("a1", "a2") for _ in range(6))
        arun(lb.program_vips(t.ns("ac"), vip_services(t, [])))
        r = curl(t, "ac", f"http://{vip}/", max_time=5)
        assert r.returncode == 7, r  # refused (7), not left to time out (28): no backend, no hang
    finally:
        start_httpd(t, "a3")
        arun(lb.clear_vips(t.ns("ac")))


def connections(t: Topo, task: str) -> int:
    """Established TCP connections to port 80 in the task's netns."""
    out = subprocess.run(netns.nsenter_argv(["ss", "-Htn", "state", "established", "sport", "= :80"],
                                            netns=t.ns(task)), capture_output=True, text=True).stdout
    return len(out.splitlines())


def who(t: Topo, where: str, url: str) -> str:
    """`task client-address` from cgi-bin/ip (busybox httpd reports [::ffff:a.b.c.d])."""
    return get(t, where, url).replace("[::ffff:", "").replace("]", "")


def test_ingress_mesh_keeps_the_client_address(topo: Topo) -> None:
    t = topo
    host_ips = [t.ing(h) for h in HOSTS]
    ports = [mesh.PublishedPort(PUBLISHED, 80)]

    async def program() -> None:
        for task in ("i2", "i3"):
            await mesh.prepare_backend(t.ns(task), "eth1", str(t.si), host_ips)
        for h in HOSTS:
            await mesh.program_ingress(ports, {PUBLISHED: [t.addr["i2"], t.addr["i3"]]},
                                       underlay_ip=t.u(h), underlay_dev="eth0", ingress_vni=t.vni_i,
                                       netns=t.ns(h))
    arun(program())
    client = t.u("h1")  # the client runs in h1's netns
    for entry in HOSTS:
        answers = [who(t, "h1", f"http://{t.u(entry)}:{PUBLISHED}/cgi-bin/ip") for _ in range(4)]
        assert sorted(answers) == sorted([f"i2 {client}", f"i3 {client}"] * 2), (entry, answers)
    # h3 is the client now: entry h2, backends on h2 and h3, replies still go back through h2.
    answers = [who(t, "h3", f"http://{t.u('h2')}:{PUBLISHED}/cgi-bin/ip") for _ in range(2)]
    assert sorted(answers) == [f"i2 {t.u('h3')}", f"i3 {t.u('h3')}"]
    r = subprocess.run(netns.nsenter_argv(
        ["curl", "-sS", "--max-time", "10", f"http://{t.u('h2')}:{PUBLISHED}/big.bin"],
        netns=t.ns("h1")), capture_output=True, timeout=15)
    assert r.returncode == 0 and len(r.stdout) == 1 << 20, r.stderr
    # The mesh opened no path from the underlay into a plain overlay.
    assert curl(t, "h1", f"http://{t.addr['a2']}/", max_time=1).returncode != 0


def test_remove_network_only_when_unused(topo: Topo) -> None:
    t, vni = topo, topo.vni_i + 1
    arun(overlay.ensure_network(vni, "10.99.0.0/24", None, t.u("h1"), netns=t.ns("h1")))
    netns.add(t.ns("tmp"))
    try:
        arun(overlay.attach(t.ns("tmp"), vni, "eth1", "10.99.0.5/24", host_netns=t.ns("h1")))
        with pytest.raises(overlay.NetworkInUse):
            arun(overlay.remove_network(vni, netns=t.ns("h1")))
        arun(overlay.detach(t.ns("tmp"), "eth1", host_netns=t.ns("h1")))
        arun(overlay.remove_network(vni, netns=t.ns("h1")))
        assert not links.exists(t.ns("h1"), overlay.bridge_name(vni))
        assert not links.exists(t.ns("h1"), overlay.vxlan_name(vni))
    finally:
        netns.delete(t.ns("tmp"))

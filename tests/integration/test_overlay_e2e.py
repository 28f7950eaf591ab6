"""Overlay networks, DNS, VIPs and the ingress routing mesh end to end on a 3-host lab (issue 4).

One module-scoped `Lab` (node1 manager, node2/node3 workers) with:

- overlay `front`; service `web`: 3 replicas (one per host), `--init`, busybox httpd serving
  `index.html` = the task's hostname, `cgi-bin/ip` = "hostname REMOTE_ADDR" and `big.bin` = the
  first 1 MiB of `seq 1 200000` (known here, so its bytes can be checked); published 8080 -> 80
  in ingress mode;
- service `client` on `front`, pinned to node1: busybox `sleep`, the place requests are made from
  with `nsenter -t PID -n -m -u` (the task's own namespaces: its /etc/resolv.conf, its busybox);
- service `rr` on `front`, endpoint mode dnsrr, 3 replicas;
- overlay `back` and service `iso` on it (isolation).

Requests from a host (the routing mesh) run `curl` in that host's namespaces (`lab.exec`). All
traffic stays inside the lab's namespaces. The last test removes everything and checks that no
overlay link, nft table, task netns or overlay address is left on any host.
"""

from __future__ import annotations

import hashlib
import ipaddress
import re
import subprocess
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

import pytest

from tests.cluster import (
    V,
    create_network,
    create_spec,
    hostnames,
    remove,
    running_tasks,
    scale,
    service_spec,
    service_vip,
    task_address,
    task_pid,
    tasks,
    wait_all_running,
    wait_running,
)
from tests.daemon import instance_tag, wait_for
from tests.lab import Lab, require_lab_host

pytestmark = [pytest.mark.integration, pytest.mark.xdist_group("lab-overlay")]

PUBLISHED = 8080
TRIES = 30  # requests allowed to see every replica answer (round robin needs 3)
BIG = b"".join(b"%d\n" % i for i in range(1, 200001))[: 1 << 20]
WEB_SCRIPT = r"""mkdir -p /www/cgi-bin
hostname > /www/index.html
seq 1 200000 | head -c 1048576 > /www/big.bin
printf '#!/bin/sh\necho Content-Type: text/plain\necho\necho "$(hostname) $REMOTE_ADDR"\n' > /www/cgi-bin/ip
chmod 755 /www/cgi-bin/ip
exec httpd -f -p 80 -h /www
"""
SLEEP = ["sleep", "100000"]
# Objects the overlay data path makes on a host (shoal/agent/network/overlay.py, lb.py, mesh.py).
LINK_PREFIXES = ("sov", "svx", "sot")  # untagged names; tagged ones are added per host below
NFT_TABLES = ("shoal_lb", "shoal_ingress", "shoal_mesh")


@dataclass
class Env:
    lab: Lab
    front: str  # network IDs
    back: str
    hosts: dict[str, str] = field(default_factory=dict)  # node ID -> hostname


@pytest.fixture(scope="module")
def env() -> Iterator[Env]:
    require_lab_host()
    with Lab(nodes=3, dispatcher_heartbeat="1s") as lab:
        lab.wait_ready()
        front, back = create_network(lab, "front"), create_network(lab, "back")
        create_spec(lab, service_spec("web", ["sh", "-c", WEB_SCRIPT], replicas=3, networks=[front],
                                      publish={PUBLISHED: 80}, placement={"MaxReplicas": 1}))
        create_spec(lab, service_spec("client", SLEEP, networks=[front],
                                      placement={"Constraints": ["node.hostname==node1"]}))
        create_spec(lab, service_spec("rr", SLEEP, replicas=3, networks=[front], endpoint_mode="dnsrr"))
        create_spec(lab, service_spec("iso", SLEEP, networks=[back],
                                      placement={"Constraints": ["node.hostname==node2"]}))
        wait_all_running(lab, {"web": 3, "client": 1, "rr": 3, "iso": 1})
        env = Env(lab, front, back, hostnames(lab))
        # Running as the manager sees it; the mesh, DNS and VIP tables follow from the NetworkState.
        for host in lab.hosts:
            wait_for(lambda h=host: curl(env, "node1", mesh_url(env, h)).returncode == 0, 30,
                     f"{host}:{PUBLISHED} answering through the mesh")
        wait_for(lambda: fetch_in(client(env), "http://web/").returncode == 0, 30, "web answering its VIP")
        yield env


# ------------------------------------------------------------------------------------ helpers
def in_task(task: dict[str, Any], *cmd: str, timeout: float = 15) -> subprocess.CompletedProcess[str]:
    """Run cmd inside a task's network, mount and UTS namespaces (its own binaries and resolv.conf)."""
    argv = ["nsenter", "-t", str(task_pid(task)), "-n", "-m", "-u", *cmd]
    return subprocess.run(argv, capture_output=True, text=True, timeout=timeout, check=False)


def fetch_in(task: dict[str, Any], url: str, seconds: int = 5) -> subprocess.CompletedProcess[str]:
    # busybox `wget -T` crashes on these hosts: `timeout` bounds it instead.
    return in_task(task, "timeout", str(seconds), "wget", "-qO-", url, timeout=seconds + 10)


def get_in(task: dict[str, Any], url: str) -> str:
    r = fetch_in(task, url)
    assert r.returncode == 0, f"{url} from task {task['ID'][:12]}: rc {r.returncode} {r.stderr.strip()}"
    return r.stdout.strip()


def curl(env: Env, host: str, url: str, max_time: float = 5) -> subprocess.CompletedProcess[str]:
    return env.lab.exec(host, "curl", "-sS", "--max-time", str(max_time), url, timeout=max_time + 10)


def get_from_host(env: Env, host: str, url: str) -> str:
    r = curl(env, host, url)
    assert r.returncode == 0, f"{url} from {host}: rc {r.returncode} {r.stderr.strip()}"
    return r.stdout.strip()


def mesh_url(env: Env, entry: str, path: str = "/") -> str:
    return f"http://{env.lab.address(entry)}:{PUBLISHED}{path}"


def client(env: Env) -> dict[str, Any]:
    task: dict[str, Any] = wait_for(lambda: next(iter(running_tasks(env.lab, "client")), None), 30,
                                    "the client task")
    return task


def web_hostnames(env: Env) -> dict[str, str]:
    """Hostname (as the task itself reports it) -> host it runs on, for every running web task."""
    out = {}
    for t in running_tasks(env.lab, "web"):
        r = in_task(t, "hostname")
        assert r.returncode == 0, r.stderr
        out[r.stdout.strip()] = env.hosts[t["NodeID"]]
    return out


def plain_addr(text: str) -> str:
    """busybox httpd writes an IPv4 peer as [::ffff:a.b.c.d] when it listens on IPv6."""
    return text.replace("[::ffff:", "").replace("]", "").strip()


def seen_within(fetch: Any, want: set[str], tries: int = TRIES) -> tuple[set[str], int]:
    """Call fetch() until every answer in `want` was seen or `tries` calls were made."""
    seen: set[str] = set()
    for n in range(1, tries + 1):
        seen.add(fetch())
        if want <= seen:
            return seen, n
    return seen, tries


def nslookup(task: dict[str, Any], name: str) -> subprocess.CompletedProcess[str]:
    """busybox nslookup of `name` in the task. The trailing dot stops busybox from trying the
    hostname's domain first (it ignores `ndots`; the task's hostname `svc.slot.id` has dots)."""
    return in_task(task, "nslookup", name + ".")


def addresses_in(nslookup_output: str) -> set[str]:
    """IPv4 addresses of the answer section of busybox nslookup (after the server's lines)."""
    answer = nslookup_output.split("Name:", 1)[1] if "Name:" in nslookup_output else ""
    return {a for a in re.findall(r"\b(\d+\.\d+\.\d+\.\d+)\b", answer) if not a.startswith("127.")}


class RequestLoop(threading.Thread):
    """Requests in a loop (bounded in count and time) until stopped; records failures."""

    def __init__(self, fetch: Any, max_requests: int = 2000, max_seconds: float = 90) -> None:
        super().__init__(daemon=True)
        self.fetch, self.max_requests, self.max_seconds = fetch, max_requests, max_seconds
        self.answers: list[str] = []
        self.failures: list[str] = []
        self.stop_event = threading.Event()

    def run(self) -> None:
        started = time.monotonic()
        while not self.stop_event.is_set() and len(self.answers) + len(self.failures) < self.max_requests \
                and time.monotonic() - started < self.max_seconds:
            r = self.fetch()
            if r.returncode == 0 and r.stdout.strip():
                self.answers.append(r.stdout.strip())
            else:
                self.failures.append(f"rc {r.returncode}: {r.stderr.strip()[:200]}")

    def finish(self) -> None:
        self.stop_event.set()
        self.join(timeout=30)


# ------------------------------------------------------------------------------------ tests
def test_replicas_spread_over_hosts_answer_with_their_own_hostname(env: Env) -> None:
    where = web_hostnames(env)
    assert sorted(where.values()) == ["node1", "node2", "node3"], where
    for t in running_tasks(env.lab, "web"):  # each replica, asked at its own overlay address
        own = in_task(t, "hostname").stdout.strip()
        assert get_in(client(env), f"http://{task_address(t, env.front)}/") == own


def test_published_port_on_every_host_reaches_every_replica(env: Env) -> None:
    want = set(web_hostnames(env))
    for client_host, entry in (("node1", "node1"), ("node1", "node2"), ("node1", "node3"),
                               ("node2", "node3"), ("node3", "node1")):
        # The mesh is programmed from the NetworkState after the tasks run: wait for its first answer.
        wait_for(lambda c=client_host, e=entry: curl(env, c, mesh_url(env, e)).returncode == 0, 30,
                 f"{entry}:{PUBLISHED} answering {client_host}")
        seen, n = seen_within(lambda c=client_host, e=entry: get_from_host(env, c, mesh_url(env, e)), want)
        assert seen == want, f"{client_host} -> {entry}:{PUBLISHED}: saw {seen} in {n} requests"


def test_service_reaches_another_by_name_and_tasks_name_across_hosts(env: Env) -> None:
    c = client(env)
    where = web_hostnames(env)
    # By name: the VIP, spread over every replica (two of them on other hosts than the client).
    seen, n = seen_within(lambda: get_in(c, "http://web/"), set(where))
    assert seen == set(where), f"web from the client: saw {seen} in {n} requests"
    vip = service_vip(env.lab, "web", env.front)
    r = nslookup(c, "web")
    assert r.returncode == 0 and addresses_in(r.stdout) == {vip}, r.stdout + r.stderr
    # tasks.web: every task's own address; a request by that name reaches a task on another host.
    addrs = {task_address(t, env.front) for t in running_tasks(env.lab, "web")}
    r = nslookup(c, "tasks.web")
    assert r.returncode == 0 and addresses_in(r.stdout) == addrs, r.stdout + r.stderr
    # Every address tasks.web gives is reachable from the client, those on other hosts included.
    # (A client's resolver sorts multiple A records by prefix match, so fetching by the name
    # alone would always pick the same task: DNS round robin is up to the client, as in Docker.)
    others = {h for h, node in where.items() if node != env.hosts[c["NodeID"]]}
    answered = {get_in(c, f"http://{addr}/") for addr in addresses_in(r.stdout)}
    assert answered == set(where) and answered & others, f"tasks.web addresses answered {answered}"


def test_dnsrr_name_returns_every_task_address(env: Env) -> None:
    want = {task_address(t, env.front) for t in running_tasks(env.lab, "rr")}
    assert len(want) == 3 and "" not in want, want
    r = nslookup(client(env), "rr")
    assert r.returncode == 0 and addresses_in(r.stdout) == want, r.stdout + r.stderr
    assert service_vip(env.lab, "rr", env.front) == ""  # dnsrr: no VIP


def test_one_mib_crosses_hosts_and_the_mesh_intact(env: Env) -> None:
    for _ in range(3):  # round robin: the three replicas, two of them on other hosts than node3
        r = env.lab.exec("node1", "curl", "-sS", "--max-time", "15",
                         mesh_url(env, "node3", "/big.bin"), timeout=30)
        assert r.returncode == 0, r.stderr
        assert r.stdout.encode() == BIG, f"{len(r.stdout)} bytes, not the 1 MiB file"
    c = client(env)
    for _ in range(3):  # through the VIP, from node1's client task
        r = in_task(c, "sh", "-c", "timeout 15 wget -qO- http://web/big.bin | sha256sum", timeout=30)
        assert r.returncode == 0 and r.stdout.split()[0] == hashlib.sha256(BIG).hexdigest(), r


def test_the_task_sees_the_requesters_address(env: Env) -> None:
    # Through the mesh: the client host's own lab address (no masquerade).
    for client_host, entry in (("node1", "node2"), ("node2", "node3"), ("node3", "node3")):
        for _ in range(3):
            name, addr = get_from_host(env, client_host, mesh_url(env, entry, "/cgi-bin/ip")).split()
            assert plain_addr(addr) == env.lab.address(client_host), (client_host, entry, name, addr)
    # Through the VIP: the client task's address on `front`.
    c = client(env)
    mine = task_address(c, env.front)
    for _ in range(3):
        name, addr = get_in(c, "http://web/cgi-bin/ip").split()
        assert plain_addr(addr) == mine, (name, addr)


def test_overlays_are_isolated(env: Env) -> None:
    iso = wait_for(lambda: next(iter(running_tasks(env.lab, "iso")), None), 30, "the iso task")
    webs = running_tasks(env.lab, "web")
    for t in webs:  # a task on `back` reaches no task of `front`, not even one on its own host
        r = fetch_in(iso, f"http://{task_address(t, env.front)}/", seconds=3)
        assert r.returncode != 0, f"iso reached {task_address(t, env.front)}: {r.stdout!r}"
    r = nslookup(iso, "web")
    assert not addresses_in(r.stdout), f"`back` resolves web: {r.stdout}"
    r = fetch_in(iso, "http://web/", seconds=3)
    assert r.returncode != 0, r.stdout
    # Nor does a host reach into a plain overlay (the mesh is the only way in).
    for host in env.lab.hosts:
        r = curl(env, host, f"http://{task_address(webs[0], env.front)}/", max_time=2)
        assert r.returncode != 0, f"{host} reached a front task directly: {r.stdout!r}"


def _gone(env: Env, task_id: str) -> bool:
    t = next((t for t in tasks(env.lab, "web") if t["ID"] == task_id), None)
    return t is None or t["Status"]["State"] in ("shutdown", "complete", "failed", "rejected", "orphaned",
                                                  "remove")


def test_scaling_changes_who_answers_and_a_stopped_task_gets_no_traffic(env: Env) -> None:
    lab, c = env.lab, client(env)
    before = {t["ID"]: in_task(t, "hostname").stdout.strip() for t in running_tasks(lab, "web")}
    assert len(before) == 3
    mesh_loop = RequestLoop(lambda: curl(env, "node2", mesh_url(env, "node2")))
    vip_loop = RequestLoop(lambda: fetch_in(c, "http://web/"))
    mesh_loop.start()
    vip_loop.start()
    try:
        wait_for(lambda: len(mesh_loop.answers) >= 5 and len(vip_loop.answers) >= 5, 30,
                 "both request loops answered")
        scale(lab, "web", 2)
        remaining = wait_for(lambda: (ids := {t["ID"] for t in running_tasks(lab, "web")}) and len(ids) == 2
                             and ids, 60, "web scaled to 2")
        stopped = next(i for i in before if i not in remaining)
        wait_for(lambda: _gone(env, stopped), 60, "the removed replica stopped")
        marks = len(mesh_loop.answers), len(vip_loop.answers)
        wait_for(lambda: len(mesh_loop.answers) >= marks[0] + 10 and len(vip_loop.answers) >= marks[1] + 10,
                 60, "10 more answers on each loop after the stop")
    finally:
        mesh_loop.finish()
        vip_loop.finish()
    assert mesh_loop.failures == [] and vip_loop.failures == [], (mesh_loop.failures, vip_loop.failures)
    # After the stop, the stopped replica answers nothing, through the mesh or the VIP.
    kept = {before[i] for i in remaining}
    for entry in env.lab.hosts:
        seen, n = seen_within(lambda e=entry: get_from_host(env, "node1", mesh_url(env, e)), kept)
        assert seen == kept, f"mesh via {entry} after scale-down: saw {seen} in {n}"
    seen, n = seen_within(lambda: get_in(c, "http://web/"), kept)
    assert seen == kept, f"VIP after scale-down: saw {seen} in {n}"
    assert all(get_in(c, "http://web/") in kept for _ in range(10))
    # Scaling up again: a new replica answers too.
    scale(lab, "web", 3)
    wait_running(lab, "web", 3)
    now = web_hostnames(env)
    assert set(now) - set(before.values()), f"no new replica: {now}"
    seen, n = seen_within(lambda: get_from_host(env, "node1", mesh_url(env, "node3")), set(now))
    assert seen == set(now), f"mesh after scale-up: saw {seen} in {n}"
    seen, n = seen_within(lambda: get_in(c, "http://web/"), set(now))
    assert seen == set(now), f"VIP after scale-up: saw {seen} in {n}"


def host_leftovers(env: Env, tags: dict[str, str], overlay_nets: list[ipaddress.IPv4Network]) -> list[str]:
    """Overlay objects still on the lab's hosts: links, nft tables, task netns, overlay addresses."""
    left = []
    for host in env.lab.hosts:
        links = env.lab.exec(host, "ip", "-o", "link", "show").stdout
        names = [line.split(":")[1].strip().split("@")[0] for line in links.splitlines() if ":" in line]
        prefixes = (*LINK_PREFIXES, f"o{tags[host][:6]}", f"x{tags[host][:6]}")  # shoald tags its devices
        left += [f"{host}: link {n}" for n in names if n.startswith(prefixes)]
        tables = env.lab.exec(host, "nft", "list", "tables").stdout
        left += [f"{host}: nft {line}" for line in tables.splitlines() if line.split()[-1:] and
                 line.split()[-1] in NFT_TABLES]
        addrs = env.lab.exec(host, "ip", "-o", "-4", "addr", "show").stdout
        for a in re.findall(r"inet (\d+\.\d+\.\d+\.\d+)/", addrs):
            if any(ipaddress.IPv4Address(a) in n for n in overlay_nets):
                left.append(f"{host}: address {a}")
        netns = subprocess.run(["ip", "netns", "list"], capture_output=True, text=True).stdout
        left += [f"{host}: netns {line.split()[0]}" for line in netns.splitlines()
                 if line.startswith(f"shoal-{tags[host]}-")]
    return left


def test_afterwards_no_link_rule_namespace_or_address_is_left(env: Env) -> None:
    lab = env.lab
    nets = lab.api("node1", "GET", f"{V}/networks").json()
    overlay_nets = [ipaddress.IPv4Network(c["Subnet"]) for n in nets for c in n["IPAM"]["Config"] or ()]
    tags = {h: instance_tag(lab.data_root(h)) for h in lab.hosts}
    for name in ("web", "client", "rr", "iso"):
        remove(lab, name)
    wait_for(lambda: not any(tasks(lab, s) for s in ("web", "client", "rr", "iso")), 60, "every task removed")
    def network_removed(name: str) -> bool:
        return lab.api("node1", "DELETE", f"{V}/networks/{name}").status_code in (204, 404)
    wait_for(lambda: network_removed("front"), 30, "network rm front")
    wait_for(lambda: network_removed("back"), 30, "network rm back")
    left: list[str] = []

    def clean() -> bool:
        left[:] = host_leftovers(env, tags, overlay_nets)
        return not left
    try:
        wait_for(clean, 30, "the hosts to be clean")
    except AssertionError as e:
        raise AssertionError(f"{e}: still there: {left}") from None

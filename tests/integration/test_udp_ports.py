"""UDP through the routing mesh, and host-mode ports of services on no overlay network (issue 4).

One module-scoped 3-host `Lab` (node1 manager, node2/node3 workers) with:

- `uecho`: 3 replicas (one per host) of `udpecho:test` (tools/build_udpecho_image.py: answers each
  datagram with "<hostname> <sender address>"), published 5353/udp -> 5000 in ingress mode;
- `hweb`: busybox httpd (`cgi-bin/ip` answers "hostname REMOTE_ADDR") on NO overlay network,
  pinned to node2, published 8082 -> 80 in host mode;
- `uhost`: `udpecho:test` on no overlay network, pinned to node3, published 5454/udp -> 5000 in
  host mode.

Clients run on the lab hosts (`lab.exec`): a short Python UDP client (a new socket, so a new
source port and a new conntrack entry, per datagram) and curl. The sender address a task reports
must be the client host's own lab address: nothing is masqueraded. All traffic stays inside the
lab's namespaces.
"""

from __future__ import annotations

import subprocess
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import pytest

from tests.cluster import create_spec, remove, running_tasks, task_pid, tasks, wait_all_running
from tests.daemon import wait_for
from tests.lab import Lab, require_lab_host

pytestmark = [pytest.mark.integration, pytest.mark.xdist_group("lab-udp")]

MESH_UDP, HOST_TCP, HOST_UDP = 5353, 8082, 5454
ECHO_PORT = 5000
WEB_SCRIPT = r"""mkdir -p /www/cgi-bin
printf '#!/bin/sh\necho Content-Type: text/plain\necho\necho "$(hostname) $REMOTE_ADDR"\n' > /www/cgi-bin/ip
chmod 755 /www/cgi-bin/ip
exec httpd -f -p 80 -h /www
"""
CLIENT = """
import socket, sys
host, port, count = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])
for _ in range(count):
    s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    s.settimeout(1.0)
    try:
        s.sendto(b"ping", (host, port))
        print(s.recv(200).decode().strip())
    except OSError as e:
        print("ERR", type(e).__name__)
    finally:
        s.close()
"""
CURL_CONNECT_REFUSED = 7


def spec(name: str, *, image: str, args: list[str] | None, replicas: int, port: dict[str, Any],
         placement: dict[str, Any]) -> dict[str, Any]:
    container: dict[str, Any] = {"Image": image, "Init": True}
    if args:
        container["Args"] = args
    template = {"ContainerSpec": container, "RestartPolicy": {"Condition": "any", "Delay": 200_000_000},
                "Placement": placement}
    return {"Name": name, "TaskTemplate": template, "Mode": {"Replicated": {"Replicas": replicas}},
            "EndpointSpec": {"Mode": "vip", "Ports": [port]}}


def port(protocol: str, published: int, target: int, mode: str) -> dict[str, Any]:
    return {"Protocol": protocol, "PublishedPort": published, "TargetPort": target, "PublishMode": mode}


@dataclass
class Env:
    lab: Lab


@pytest.fixture(scope="module")
def env() -> Iterator[Env]:
    require_lab_host()
    with Lab(nodes=3, dispatcher_heartbeat="1s") as lab:
        lab.wait_ready()
        create_spec(lab, spec("uecho", image="udpecho:test", args=None, replicas=3,
                              port=port("udp", MESH_UDP, ECHO_PORT, "ingress"), placement={"MaxReplicas": 1}))
        create_spec(lab, spec("hweb", image="busybox:latest", args=["sh", "-c", WEB_SCRIPT], replicas=1,
                              port=port("tcp", HOST_TCP, 80, "host"),
                              placement={"Constraints": ["node.hostname==node2"]}))
        create_spec(lab, spec("uhost", image="udpecho:test", args=None, replicas=1,
                              port=port("udp", HOST_UDP, ECHO_PORT, "host"),
                              placement={"Constraints": ["node.hostname==node3"]}))
        wait_all_running(lab, {"uecho": 3, "hweb": 1, "uhost": 1})
        yield Env(lab)


# ------------------------------------------------------------------------------------ helpers
def udp(env: Env, client: str, target: str, port_no: int, count: int) -> list[str]:
    """Replies (or "ERR <exception>") to `count` datagrams sent from host `client`, each from a new
    socket, to host `target`'s lab address."""
    r = env.lab.exec(client, sys.executable, "-c", CLIENT, env.lab.address(target), str(port_no), str(count),
                     timeout=count * 2 + 20)
    assert r.returncode == 0, r.stderr
    return r.stdout.splitlines()


def task_hostnames(env: Env, service: str) -> set[str]:
    names = set()
    for t in running_tasks(env.lab, service):
        r = subprocess.run(["nsenter", "-t", str(task_pid(t)), "-u", "hostname"], capture_output=True,
                           text=True, timeout=10, check=False)
        assert r.returncode == 0, r.stderr
        names.add(r.stdout.strip())
    return names


def in_task_netns(task: dict[str, Any], *cmd: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(["nsenter", "-t", str(task_pid(task)), "-n", *cmd], capture_output=True, text=True,
                          timeout=15, check=False)


# -------------------------------------------------------------------------------------- tests
def test_udp_through_the_mesh_reaches_every_replica_from_every_entry_with_the_client_address(
        env: Env) -> None:
    want = task_hostnames(env, "uecho")
    assert len(want) == 3
    client = "node1"
    for entry in env.lab.hosts:
        seen: dict[str, set[str]] = {}

        def all_answered(entry: str = entry, seen: dict[str, set[str]] = seen) -> bool:
            for line in udp(env, client, entry, MESH_UDP, 6):
                if not line.startswith("ERR"):
                    name, addr = line.split()
                    seen.setdefault(name, set()).add(addr)
            return set(seen) >= want
        try:
            wait_for(all_answered, 60, f"every replica answering UDP through {entry}")
        except AssertionError as e:
            table = env.lab.exec(entry, "nft", "list", "table", "ip", "shoal_ingress").stdout
            raise AssertionError(f"{e}: seen {seen}\n{table}") from None
        assert set(seen) == want, seen
        # Replicas on other hosts than the entry answered too, and every one saw the client host.
        assert all(addrs == {env.lab.address(client)} for addrs in seen.values()), (entry, seen)


def test_host_mode_tcp_without_an_overlay_network_answers_on_its_host_with_the_client_address(
        env: Env) -> None:
    (name,) = task_hostnames(env, "hweb")
    for client in ("node1", "node3", "node2"):
        url = f"http://{env.lab.address('node2')}:{HOST_TCP}/cgi-bin/ip"

        def answered(client: str = client, url: str = url) -> str | None:
            r = env.lab.exec(client, "curl", "-sS", "--max-time", "5", url, timeout=15)
            return r.stdout.strip() if r.returncode == 0 else None
        got = wait_for(answered, 30, f"{url} answering {client}")
        task, addr = got.split()  # busybox httpd writes IPv4 as "[::ffff:a.b.c.d]"
        assert (task, addr.strip("[]").removeprefix("::ffff:")) == (name, env.lab.address(client)), got
    for other in ("node1", "node3"):  # host mode: published only where a task runs
        r = env.lab.exec("node1", "curl", "-sS", "--max-time", "5",
                         f"http://{env.lab.address(other)}:{HOST_TCP}/", timeout=15)
        assert r.returncode == CURL_CONNECT_REFUSED, (other, r.returncode, r.stdout, r.stderr)


def test_host_mode_udp_answers_on_its_host_with_the_client_address(env: Env) -> None:
    (name,) = task_hostnames(env, "uhost")
    for client in ("node1", "node2", "node3"):
        got = wait_for(lambda c=client: next((line for line in udp(env, c, "node3", HOST_UDP, 2)
                                               if not line.startswith("ERR")), None),
                       30, f"node3:{HOST_UDP}/udp answering {client}")
        assert got == f"{name} {env.lab.address(client)}", (client, got)
    assert all(line.startswith("ERR") for line in udp(env, "node1", "node2", HOST_UDP, 2))


def test_a_task_has_a_route_off_its_networks_only_for_replies_of_its_published_udp_port(env: Env) -> None:
    outside = env.lab.address("node1")  # off every task network
    for service in ("uecho", "uhost"):
        task = running_tasks(env.lab, service)[0]
        plain = in_task_netns(task, "ip", "route", "get", outside)
        assert plain.returncode != 0 and "unreachable" in plain.stderr, (service, plain.stdout, plain.stderr)
        other_port = in_task_netns(task, "ip", "route", "get", outside, "ipproto", "udp", "sport", "5001")
        assert other_port.returncode != 0, (service, other_port.stdout)
        reply = in_task_netns(task, "ip", "route", "get", outside, "ipproto", "udp", "sport", str(ECHO_PORT))
        assert reply.returncode == 0 and " via " in reply.stdout, (service, reply.stdout, reply.stderr)


def test_after_its_host_dies_and_returns_the_host_mode_port_answers_again(env: Env) -> None:
    (before,) = running_tasks(env.lab, "uhost")
    env.lab.stop("node3", kill=True)  # shoald and its containers die
    env.lab.start("node3")
    wait_for(lambda: [t["ID"] for t in running_tasks(env.lab, "uhost")] not in ([], [before["ID"]]), 90,
             "a new uhost task running on node3")
    (name,) = task_hostnames(env, "uhost")
    got = wait_for(lambda: next((line for line in udp(env, "node1", "node3", HOST_UDP, 2)
                                 if not line.startswith("ERR")), None), 30, f"node3:{HOST_UDP}/udp answering")
    assert got == f"{name} {env.lab.address('node1')}", got


def test_afterwards_no_host_port_table_or_rule_is_left(env: Env) -> None:
    for name in ("uecho", "hweb", "uhost"):
        remove(env.lab, name)
    wait_for(lambda: not any(tasks(env.lab, n) for n in ("uecho", "hweb", "uhost")), 60, "every task removed")

    def tables_left() -> list[str]:
        return [f"{h}:{t}" for h in env.lab.hosts for t in ("shoal_hostports", "shoal_ingress")
                if env.lab.exec(h, "nft", "list", "table", "ip", t).returncode == 0]
    wait_for(lambda: not tables_left(), 30, "no host-port or ingress table on any host")
    assert all(line.startswith("ERR") for line in udp(env, "node1", "node2", MESH_UDP, 2))

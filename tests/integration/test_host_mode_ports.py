"""Host-mode published ports end to end on a 3-host lab (issue 4): published only where a task runs.

One module-scoped `Lab` (node1 manager, node2/node3 workers), overlay `hpnet` and service `hweb`:
2 replicas, `MaxReplicas: 1`, busybox httpd serving the task's hostname on port 80, published
`published=8081,target=80,mode=host` (shoal/agent/network/hostports.py programs the table
`shoal_hostports` on each host running a serving task). The service is on an overlay network
(tests/integration/test_udp_ports.py covers services on none, UDP and the client's address).

Requests run `curl` from node1 (`lab.exec`): to node1's own address (the output hook) and to the
other hosts' (prerouting, forwarded to the host bridge). All traffic stays in the lab's namespaces.
"""

from __future__ import annotations

import subprocess
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

import pytest

from tests.cluster import (
    create_network,
    create_spec,
    hostnames,
    remove,
    running_tasks,
    scale,
    task_pid,
    tasks,
    wait_running,
)
from tests.daemon import wait_for
from tests.lab import Lab, require_lab_host

pytestmark = [pytest.mark.integration, pytest.mark.xdist_group("lab-hostports")]

PUBLISHED = 8081
SERVICE = "hweb"
WEB_SCRIPT = "mkdir -p /www && hostname > /www/index.html && exec httpd -f -p 80 -h /www"
CURL_CONNECT_REFUSED = 7


@dataclass
class Env:
    lab: Lab
    net: str
    hosts: dict[str, str] = field(default_factory=dict)  # node ID -> hostname


def host_mode_spec(replicas: int, network: str) -> dict[str, Any]:
    template = {
        "ContainerSpec": {"Image": "busybox:latest", "Args": ["sh", "-c", WEB_SCRIPT], "Init": True},
        "RestartPolicy": {"Condition": "any", "Delay": 200_000_000},
        "Networks": [{"Target": network}],
        "Placement": {"MaxReplicas": 1},
    }
    ports = [{"Protocol": "tcp", "TargetPort": 80, "PublishedPort": PUBLISHED, "PublishMode": "host"}]
    return {"Name": SERVICE, "TaskTemplate": template, "Mode": {"Replicated": {"Replicas": replicas}},
            "EndpointSpec": {"Mode": "vip", "Ports": ports}}


@pytest.fixture(scope="module")
def env() -> Iterator[Env]:
    require_lab_host()
    with Lab(nodes=3, dispatcher_heartbeat="1s") as lab:
        lab.wait_ready()
        net = create_network(lab, "hpnet")
        create_spec(lab, host_mode_spec(2, net))
        try:
            wait_running(lab, SERVICE, 2)
        except AssertionError as e:
            raise AssertionError(f"{e}; tasks: {task_states(lab)}\n{lab.logs_tail()}") from None
        yield Env(lab, net, hostnames(lab))


# ------------------------------------------------------------------------------------ helpers
def task_states(lab: Lab) -> list[tuple[Any, ...]]:
    return [(t["Slot"], t["NodeID"][:8], t["DesiredState"], t["Status"]["State"], t["Status"].get("Err"))
            for t in tasks(lab, SERVICE)]


def task_hostname_by_host(env: Env) -> dict[str, str]:
    """Host -> the hostname the task running there reports (what its httpd serves)."""
    out = {}
    for t in running_tasks(env.lab, SERVICE):
        argv = ["nsenter", "-t", str(task_pid(t)), "-u", "hostname"]
        r = subprocess.run(argv, capture_output=True, text=True, timeout=10, check=False)
        assert r.returncode == 0, r.stderr
        out[env.hosts[t["NodeID"]]] = r.stdout.strip()
    return out


def curl(env: Env, target_host: str) -> subprocess.CompletedProcess[str]:
    url = f"http://{env.lab.address(target_host)}:{PUBLISHED}/"
    return env.lab.exec("node1", "curl", "-sS", "--max-time", "5", url, timeout=15)


def answers(env: Env, target_host: str, want: str) -> bool:
    r = curl(env, target_host)
    return r.returncode == 0 and r.stdout.strip() == want


def assert_each_task_host_answers(env: Env, by_host: dict[str, str]) -> None:
    for host, name in by_host.items():
        try:
            wait_for(lambda h=host, n=name: answers(env, h, n), 30, f"{host}:{PUBLISHED} answering {name}")
        except AssertionError as e:
            r = curl(env, host)
            table = env.lab.exec(host, "nft", "list", "table", "ip", "shoal_hostports").stdout
            raise AssertionError(f"{e}: last rc {r.returncode} {r.stdout.strip()!r} {r.stderr.strip()}\n"
                                 f"{table}") from None


# -------------------------------------------------------------------------------------- tests
def test_two_replicas_run_on_two_hosts_and_each_answers_with_its_task(env: Env) -> None:
    by_host = task_hostname_by_host(env)
    assert len(by_host) == 2, by_host
    assert len(set(by_host.values())) == 2
    assert_each_task_host_answers(env, by_host)


def test_the_host_without_a_task_refuses_the_connection(env: Env) -> None:
    by_host = task_hostname_by_host(env)
    (idle,) = set(env.lab.hosts) - set(by_host)
    for _ in range(3):
        r = curl(env, idle)
        assert r.returncode == CURL_CONNECT_REFUSED, (r.returncode, r.stdout, r.stderr)
    listed = env.lab.exec(idle, "nft", "list", "table", "ip", "shoal_hostports")
    assert listed.returncode != 0, f"{idle} has a host-port table without a task: {listed.stdout}"


def test_scaling_to_three_puts_the_third_on_the_remaining_host_and_it_answers(env: Env) -> None:
    before = task_hostname_by_host(env)
    (idle,) = set(env.lab.hosts) - set(before)
    scale(env.lab, SERVICE, 3)
    placed = wait_running(env.lab, SERVICE, 3)
    assert set(placed) == set(env.lab.hosts), (placed, task_states(env.lab))
    after = task_hostname_by_host(env)
    assert {h: after[h] for h in before} == before  # the first two were not moved
    assert_each_task_host_answers(env, {idle: after[idle]})
    assert_each_task_host_answers(env, before)


def test_scaling_to_four_leaves_one_pending_for_the_host_port(env: Env) -> None:
    scale(env.lab, SERVICE, 4)
    want = "no suitable node (host-mode port already in use on 3 nodes)"

    def pending_errs() -> list[str]:
        return [t["Status"].get("Err") or "" for t in tasks(env.lab, SERVICE)
                if t["Status"]["State"] == "pending" and t["DesiredState"] == "running"]
    errs = wait_for(lambda: (e := pending_errs()) and all(e) and e, 30, "a pending task with a reason")
    assert errs == [want], (errs, task_states(env.lab))


def test_afterwards_no_host_port_table_is_left(env: Env) -> None:
    remove(env.lab, SERVICE)
    wait_for(lambda: not tasks(env.lab, SERVICE), 60, "every task removed")

    def tables_left() -> list[str]:
        return [h for h in env.lab.hosts
                if env.lab.exec(h, "nft", "list", "table", "ip", "shoal_hostports").returncode == 0]
    wait_for(lambda: not tables_left(), 30, "no shoal_hostports table on any host")
    for host in env.lab.hosts:
        assert curl(env, host).returncode == CURL_CONNECT_REFUSED

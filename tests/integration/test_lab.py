"""`shoal lab` on the real thing: hosts in network namespaces, their shoalds, the swarm they form,
exec, link cuts, host stop/start, and a `down` that leaves nothing behind.

One 3-host lab is shared by the module (its tests run on one xdist worker); the `down` tests make
labs of their own. Needs root, crun and build/images/busybox.tar (skipped otherwise).
"""

from __future__ import annotations

import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest
from click.testing import CliRunner

from shoal.cli.lab import lab as lab_cli
from shoal.hostnet import mounts, netns, procs
from shoal.lab import names, net
from shoal.lab import up as lab_up
from tests.daemon import wait_for
from tests.lab import Lab, require_lab_host, unique_name

pytestmark = [pytest.mark.integration, pytest.mark.xdist_group("lab-test_lab")]

V = "/v1.50"
HOSTS = ["node1", "node2", "node3"]


@pytest.fixture(scope="module")
def lab() -> Iterator[Lab]:
    require_lab_host()
    with Lab(nodes=3, dispatcher_heartbeat="1s") as lab:
        yield lab


def pings(lab: Lab, src: str, dst: str) -> bool:
    return lab.exec(src, "busybox", "ping", "-c1", "-W1", lab.address(dst)).returncode == 0


def test_hosts_answer_with_their_own_names_and_paths(lab: Lab) -> None:
    for i, host in enumerate(HOSTS, start=1):
        assert lab.socket(host) == Path(f"/run/shoal/lab/{lab.name}/{host}.sock")
        assert lab.api(host, "GET", "/_ping").text == "OK"
        info = lab.api(host, "GET", f"{V}/info").json()
        assert info["Name"] == host
        assert info["DockerRootDir"] == f"/var/lib/shoal/lab/{lab.name}/{host}"
        assert info["Images"] >= 1  # build/images/busybox.tar was loaded
        assert lab.address(host).endswith(f".{i}")


def test_node1_manages_and_workers_joined(lab: Lab) -> None:
    assert lab.api("node1", "GET", f"{V}/info").json()["Swarm"]["ControlAvailable"] is True
    for worker in HOSTS[1:]:
        swarm = lab.api(worker, "GET", f"{V}/info").json()["Swarm"]
        assert swarm["LocalNodeState"] == "active" and swarm["ControlAvailable"] is False
        assert swarm["NodeAddr"] == lab.address(worker)
    lab.wait_ready(HOSTS)
    spec = lab.api("node1", "GET", f"{V}/swarm").json()["Spec"]
    assert spec["Dispatcher"]["HeartbeatPeriod"] == 1_000_000_000


def test_exec_runs_in_the_hosts_namespaces(lab: Lab) -> None:
    for host in HOSTS:
        assert lab.exec(host, "hostname").stdout.strip() == host
        route = lab.exec(host, "ip", "-4", "route")
        assert route.returncode == 0 and "default" not in route.stdout, route.stdout
        assert f"src {lab.address(host)}" in route.stdout
        env = lab.exec(host, "sh", "-c", "echo $DOCKER_HOST $SHOAL_HOST").stdout.split()
        assert env == [f"unix://{lab.socket(host)}"] * 2


def test_link_down_cuts_and_up_heals(lab: Lab) -> None:
    assert pings(lab, "node1", "node2")
    lab.link("node2", up=False)
    try:
        assert not pings(lab, "node1", "node2")
        assert pings(lab, "node1", "node3")  # only node2's wire is cut
    finally:
        lab.link("node2", up=True)
    wait_for(lambda: pings(lab, "node1", "node2"), 10, "node1 to reach node2 again")


def crun_containers(lab: Lab, host: str) -> list[str]:
    root = f"/run/shoal/crun-{names.instance_tag(lab.data_root(host))}"
    out = lab.exec(host, "crun", "--root", root, "list", "-q").stdout
    return out.split()


def test_stop_kill_kills_the_host_and_start_revives_it(lab: Lab) -> None:
    spec = {"Name": "sleeper", "Mode": {"Global": {}},
            "TaskTemplate": {"ContainerSpec": {"Image": "busybox:latest", "Args": ["sleep", "600"]}}}
    assert lab.api("node1", "POST", f"{V}/services/create", json=spec).status_code == 201
    try:
        wait_for(lambda: crun_containers(lab, "node3"), 30, "a container running on node3")
        pid = lab.state.host("node3").pid
        lab.stop("node3", kill=True)
        assert not procs.alive(pid) and not lab.pings("node3")
        assert crun_containers(lab, "node3") == []
        wait_for(lambda: "node3" not in lab.ready_nodes(), 20, "node1 to see node3 down")
        lab.start("node3")
        assert lab.pings("node3")
        lab.wait_ready(HOSTS)
        assert lab.api("node3", "GET", f"{V}/info").json()["Swarm"]["LocalNodeState"] == "active"
    finally:
        lab.api("node1", "DELETE", f"{V}/services/sleeper")


def run_cli(*args: str) -> tuple[int, str]:
    result = CliRunner().invoke(lab_cli, list(args))
    return result.exit_code, result.output


def test_cli_lists_and_refuses_mistakes(lab: Lab) -> None:
    code, out = run_cli("ls")
    assert code == 0 and out.splitlines()[0].split() == ["NAME", "NODES", "SUBNET", "STATE"]
    row = next(line for line in out.splitlines() if line.startswith(lab.name + " "))
    assert row.split()[1] == "3" and "node1:up node2:up node3:up" in row
    assert run_cli("up", "--nodes", "1", "--name", lab.name)[0] == 1  # exists: refused
    assert "already exists" in run_cli("up", "--nodes", "1", "--name", lab.name)[1]
    assert "invalid lab name" in run_cli("up", "--nodes", "1", "--name", "Bad-Name")[1]
    code, out = run_cli("stop", "--name", lab.name, "node9")
    assert code == 1 and "has no host 'node9'" in out
    assert run_cli("link", "--name", unique_name(), "node1", "down")[0] == 1  # no such lab
    assert lab.pings("node1")


def lab_command(*args: str) -> subprocess.CompletedProcess[str]:
    """`shoal lab ARGS` as a user runs it (a process of its own: exec replaces it)."""
    return subprocess.run([sys.executable, "-m", "shoal.cli.lab", *args], capture_output=True, text=True,
                          timeout=60, check=False)


def test_cli_exec_runs_the_command_in_the_host(lab: Lab) -> None:
    done = lab_command("exec", "--name", lab.name, "node2", "--", "sh", "-c", "hostname; exit 3")
    assert done.returncode == 3 and done.stdout.strip() == "node2", done.stderr
    done = lab_command("exec", "--name", lab.name, "node3", "ip", "-4", "-o", "addr", "show", "eth0")
    assert done.returncode == 0 and f"inet {lab.address('node3')}/" in done.stdout, done.stderr
    assert lab_command("exec", "--name", lab.name, "node7", "--", "true").returncode == 1


def test_cli_up_and_down() -> None:
    require_lab_host()
    name = unique_name()
    try:
        up = lab_command("up", "--nodes", "2", "--name", name, "--dispatcher-heartbeat", "1s")
        assert up.returncode == 0, up.stdout + up.stderr
        lines = up.stdout.splitlines()
        assert lines[1].split()[::2] == ["node1", "manager"] and lines[2].split()[::2] == ["node2", "worker"]
        assert f"{name} " in lab_command("ls").stdout
    finally:
        down = lab_command("down", "--name", name)
    assert down.returncode == 0 and down.stdout.strip() == name, down.stderr
    assert lab_command("down", "--name", name).returncode == 1  # nothing left to remove


def leftovers(name: str, tags: list[str]) -> dict[str, object]:
    """Everything of lab `name` (hosts with instance tags `tags`) still on the machine."""
    data = names.data_dir(name)
    return {
        "netns": [n for n in netns.list_names("shoal-") if n.startswith(names.netns_prefix(name))
                  or any(n.startswith(f"shoal-{t}-") for t in tags)],
        "mounts": mounts.mounts_under(data) + mounts.mounts_under(names.run_dir(name)),
        "procs": procs.pids_with_option("--data-root", f"{data}/", prefix=True),
        "dirs": [str(p) for p in (data, names.run_dir(name), *(Path(f"/run/shoal/crun-{t}") for t in tags))
                 if p.exists()],
        "cgroups": [str(p) for t in tags for p in Path("/sys/fs/cgroup").glob(f"*/shoal-{t}")],
    }


def test_down_removes_everything() -> None:
    require_lab_host()
    lab = Lab(nodes=2, dispatcher_heartbeat="1s")
    with lab:
        spec = {"Name": "s", "Mode": {"Global": {}},
                "TaskTemplate": {"ContainerSpec": {"Image": "busybox:latest", "Args": ["sleep", "600"]}}}
        assert lab.api("node1", "POST", f"{V}/services/create", json=spec).status_code == 201
        wait_for(lambda: all(crun_containers(lab, h) for h in lab.hosts), 30, "a container on each host")
        tags = [names.instance_tag(lab.data_root(h)) for h in lab.hosts]
        assert all(leftovers(lab.name, tags).values())  # the check below can see each kind
        names.state_file(lab.name).unlink()  # as after a crash: down must not need the state
    assert leftovers(lab.name, tags) == {k: [] for k in ("netns", "mounts", "procs", "dirs", "cgroups")}


def test_down_removes_a_half_made_lab() -> None:
    require_lab_host()
    name = unique_name()
    state = lab_up.plan(name, 2, [])
    try:
        net.make_switch(name)
        net.make_host(state, state.hosts[0])  # node2 never made: up "crashed" here
    finally:
        code, out = run_cli("down", "--name", name)
    assert code == 0 and out.strip() == name
    assert leftovers(name, []) == {k: [] for k in ("netns", "mounts", "procs", "dirs", "cgroups")}
    assert not Path(f"/run/shoal/lab/{name}/node1.uts").exists()

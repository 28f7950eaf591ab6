"""The real `docker` CLI (28.x) against two shoald on loopback: join tokens, join, node commands.

`docker swarm join` is sent to the joining daemon's socket, which joins the manager's cluster port
(127.0.0.1, a port the kernel picked). Both daemons run on one machine, so their hostnames are
equal: nodes are named by ID here. Each CLI call uses a private DOCKER_CONFIG.
"""

from __future__ import annotations

import re
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.compat.test_docker_cli import Docker
from tests.daemon import Daemon, wait_for

pytestmark = [pytest.mark.compat, pytest.mark.xdist_group("compat-docker-nodes")]

WORKER_MESSAGE = ("This node is not a swarm manager. Worker nodes can't be used to view or modify "
                  "cluster state.")
JOIN_LINE = re.compile(r"docker swarm join --token (SWMTKN-1-\S+) (127\.0\.0\.1:\d+)")


@pytest.fixture
def two(tmp_path: Path) -> Iterator[tuple[Docker, Docker]]:
    """The docker CLI for a manager (swarm init done) and for a daemon outside the swarm."""
    (tmp_path / "m").mkdir()
    (tmp_path / "w").mkdir()
    with Daemon(tmp_path / "m") as manager, Daemon(tmp_path / "w") as worker:
        m, w = Docker(manager, tmp_path / "cfg-m"), Docker(worker, tmp_path / "cfg-w")
        m.run("swarm", "init", "--advertise-addr", "127.0.0.1")
        yield m, w


def _join(m: Docker, w: Docker) -> str:
    """Join `w` to `m` with the CLI; returns the worker's node ID."""
    match = JOIN_LINE.search(m.run("swarm", "join-token", "worker").stdout)
    assert match, "join-token printed no join command"
    out = w.run("swarm", "join", "--token", match.group(1), match.group(2)).stdout
    assert out.strip() == "This node joined a swarm as a worker."
    node_id = w.run("info", "--format", "{{.Swarm.NodeID}}").stdout.strip()
    wait_for(lambda: m.run("node", "inspect", node_id, "--format", "{{.Status.State}}").stdout.strip()
             == "ready", 30, "the worker Ready")
    return node_id


def test_join_token_and_join(two: tuple[Docker, Docker]) -> None:
    m, w = two
    printed = m.run("swarm", "join-token", "worker").stdout
    assert "To add a worker to this swarm, run the following command:" in printed
    match = JOIN_LINE.search(printed)
    assert match, printed
    token = m.run("swarm", "join-token", "-q", "worker").stdout.strip()
    assert token == match.group(1)
    rotated = m.run("swarm", "join-token", "--rotate", "-q", "worker").stdout.strip()
    assert rotated.startswith("SWMTKN-1-") and rotated != token
    m.run("swarm", "update", "--dispatcher-heartbeat", "3s", "--cert-expiry", "48h")
    spec = m.run("info", "--format", "{{.Swarm.Cluster.Spec.Dispatcher.HeartbeatPeriod}} "
                 "{{.Swarm.Cluster.Spec.CAConfig.NodeCertExpiry}}").stdout.strip()
    assert spec == "3s 48h0m0s"
    assert m.run("swarm", "join-token", "-q", "worker").stdout.strip() == rotated

    old = w.run("swarm", "join", "--token", token, match.group(2), check=False)
    assert old.returncode == 1 and "A valid join token is necessary" in old.stderr
    manager_token = m.run("swarm", "join-token", "-q", "manager").stdout.strip()
    as_manager = w.run("swarm", "join", "--token", manager_token, match.group(2), check=False)
    assert as_manager.returncode == 1 and "not supported until high availability" in as_manager.stderr
    assert w.run("info", "--format", "{{.Swarm.LocalNodeState}}").stdout.strip() == "inactive"

    out = w.run("swarm", "join", "--token", rotated, match.group(2)).stdout
    assert out.strip() == "This node joined a swarm as a worker."
    assert "Is Manager: false" in w.run("info").stdout
    refused = w.run("service", "ls", check=False)
    assert refused.returncode == 1 and WORKER_MESSAGE in refused.stderr
    assert w.run("swarm", "leave").stdout.strip() == "Node left the swarm."


def test_node_commands(two: tuple[Docker, Docker]) -> None:
    m, w = two
    worker_id = _join(m, w)
    manager_id = m.run("info", "--format", "{{.Swarm.NodeID}}").stdout.strip()
    rows = m.run("node", "ls", "--format", "{{.ID}} {{.Self}} {{.Status}} {{.Availability}} "
                 "[{{.ManagerStatus}}] {{.EngineVersion}}").stdout.strip().splitlines()
    assert sorted(rows) == sorted([
        f"{manager_id} true Ready Active [Leader] 28.2.2-shoal.0.1.0",
        f"{worker_id} false Ready Active [] 28.2.2-shoal.0.1.0"])
    table = m.run("node", "ls").stdout.splitlines()
    assert table[0].split()[:2] == ["ID", "HOSTNAME"] and len(table) == 3
    assert any(line.startswith(f"{manager_id} *") for line in table[1:])
    assert m.run("node", "inspect", "self", "--format", "{{.ID}} {{.Spec.Role}}").stdout.strip() \
        == f"{manager_id} manager"
    assert "Status:" in m.run("node", "inspect", "--pretty", worker_id).stdout

    m.run("service", "create", "-d", "--name", "web", "--replicas", "4", "busybox:latest", "sleep", "3600")
    wait_for(lambda: len(m.run("node", "ps", worker_id, "--filter", "desired-state=running",
                               "--format", "{{.Name}} {{.CurrentState}}").stdout.strip().splitlines()) == 2,
             60, "2 tasks on the worker")
    assert m.run("node", "update", "--availability", "drain", "--label-add", "zone=a",
                 worker_id).stdout.strip() == worker_id
    assert m.run("node", "inspect", worker_id, "--format",
                 "{{.Spec.Availability}} {{.Spec.Labels}}").stdout.strip() == "drain map[zone:a]"
    wait_for(lambda: not m.run("node", "ps", worker_id, "--filter", "desired-state=running",
                               "-q").stdout.strip(), 60, "no running task left on the drained worker")

    promote = m.run("node", "promote", worker_id, check=False)
    assert promote.returncode == 1 and "not supported until high availability" in promote.stderr
    not_down = m.run("node", "rm", worker_id, check=False)
    assert not_down.returncode == 1 and "is not down and can't be removed" in not_down.stderr
    assert m.run("node", "rm", "--force", worker_id).stdout.strip() == worker_id
    assert m.run("node", "ls", "-q").stdout.split() == [manager_id]

"""The real `docker` CLI (28.x) against a real shoald: commands of issue 2, asserted on their output.

Follows ../shared/reference/wire-protocols.md §3 (D0-D3, D7). Every test runs the docker binary
with DOCKER_HOST at the daemon's socket and a private DOCKER_CONFIG.
"""

from __future__ import annotations

import json
import re
import shutil
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.daemon import Daemon, wait_for

pytestmark = [pytest.mark.compat, pytest.mark.xdist_group("compat-docker")]

DOCKER = shutil.which("docker") or "/usr/local/bin/docker"
ID25 = re.compile(r"^[0-9a-z]{25}$")


class Docker:
    def __init__(self, daemon: Daemon, config_dir: Path) -> None:
        self.env = {"DOCKER_HOST": f"unix://{daemon.socket}", "DOCKER_CONFIG": str(config_dir),
                    "PATH": "/usr/local/bin:/usr/bin:/bin"}

    def run(self, *args: str, check: bool = True, timeout: float = 120) -> subprocess.CompletedProcess[str]:
        proc = subprocess.run([DOCKER, *args], env=self.env, capture_output=True, text=True,
                              timeout=timeout)
        if check and proc.returncode != 0:
            cmd = " ".join(args)
            raise AssertionError(f"docker {cmd} -> {proc.returncode}\n{proc.stdout}\n{proc.stderr}")
        return proc


@pytest.fixture(scope="module")
def fresh(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[Daemon, Docker]]:
    """A daemon in a one-node swarm, initialised with the docker CLI."""
    with Daemon(tmp_path_factory.mktemp("compat-cli")) as daemon:
        docker = Docker(daemon, tmp_path_factory.mktemp("docker-config"))
        docker.run("swarm", "init", "--advertise-addr", "127.0.0.1")
        yield daemon, docker


def test_d0_d1_d7_swarm_lifecycle(tmp_path: Path) -> None:
    """Negotiation and an inactive node (D0), init (D1), node ls, and leaving (D7), in order."""
    with Daemon(tmp_path / "d") as daemon:
        docker = Docker(daemon, tmp_path / "docker-config")
        assert docker.run("version", "--format", "{{.Server.APIVersion}}").stdout.strip() == "1.50"
        assert "downgraded" not in docker.run("version").stdout
        assert docker.run("info", "--format", "{{.Swarm.LocalNodeState}}").stdout.strip() == "inactive"
        err = docker.run("node", "ls", check=False)
        assert err.returncode == 1
        assert 'This node is not a swarm manager. Use "docker swarm init"' in err.stderr

        out = docker.run("swarm", "init", "--advertise-addr", "127.0.0.1").stdout
        assert re.search(r"^Swarm initialized: current node \((\w{25})\) is now a manager\.", out, re.M), out
        assert re.search(r"docker swarm join --token SWMTKN-1-\S+ 127\.0\.0\.1:\d+", out), out
        info = docker.run("info", "--format", "{{.Swarm.LocalNodeState}} {{.Swarm.ControlAvailable}}")
        assert info.stdout.strip() == "active true"
        again = docker.run("swarm", "init", check=False)
        assert again.returncode == 1 and "This node is already part of a swarm" in again.stderr
        nodes = docker.run("node", "ls", "--format",
                           "{{.Status}} {{.Availability}} {{.ManagerStatus}} {{.Self}}")
        assert nodes.stdout.strip() == "Ready Active Leader true"
        token = docker.run("swarm", "join-token", "-q", "worker").stdout.strip()
        assert token.startswith("SWMTKN-1-")
        assert docker.run("swarm", "join-token", "--rotate", "-q", "worker").stdout.strip() != token

        refused = docker.run("swarm", "leave", check=False)
        assert refused.returncode == 1 and "Use `--force`" in refused.stderr
        assert docker.run("swarm", "leave", "--force").stdout.strip() == "Node left the swarm."
        assert docker.run("info", "--format", "{{.Swarm.LocalNodeState}}").stdout.strip() == "inactive"


def test_d3_service_lifecycle(fresh: tuple[Daemon, Docker]) -> None:
    _, docker = fresh
    # The exact command: with image resolution on, the CLI asks /distribution (404 here,
    # no registry), warns on stderr and goes on, as against a Docker without registry access.
    created = docker.run("service", "create", "--name", "web", "--replicas", "3",
                         "busybox", "httpd", "-f", "-p", "80")
    assert "could not be accessed on a registry" in created.stderr
    out = created.stdout.splitlines()
    assert ID25.match(out[0]), out
    assert out[-1].startswith("verify: Service ") and out[-1].endswith(" converged"), out
    ls = docker.run("service", "ls", "--format", "{{.Name}} {{.Mode}} {{.Replicas}} {{.Image}}").stdout
    assert ls.strip() == "web replicated 3/3 busybox:latest"
    ps = docker.run("service", "ps", "web", "--format", "{{.Name}} {{.DesiredState}}",
                    "--filter", "desired-state=running").stdout.split("\n")
    assert sorted(line for line in ps if line) == ["web.1 Running", "web.2 Running", "web.3 Running"]
    inspect = docker.run("service", "inspect", "web", "--format",
                         "{{.Spec.Mode.Replicated.Replicas}} {{.Spec.TaskTemplate.ContainerSpec.Image}}")
    assert inspect.stdout.strip() == "3 busybox:latest"  # the docker CLI tags it :latest
    scaled = docker.run("service", "scale", "web=5")
    assert scaled.stdout.startswith("web scaled to 5"), scaled.stdout
    ls = docker.run("service", "ls", "--format", "{{.Replicas}}").stdout.strip()
    assert ls == "5/5"


def test_d3_logs(fresh: tuple[Daemon, Docker]) -> None:
    _, docker = fresh
    docker.run("service", "create", "-d", "--name", "talker", "--no-resolve-image", "busybox",
               "sh", "-c", "echo hello-from-$(hostname); exec sleep 1000")

    def has_lines() -> bool:
        out = docker.run("service", "logs", "--no-task-ids", "talker", check=False).stdout
        return "hello-from-" in out

    wait_for(has_lines, 60, "talker's log line")
    out = docker.run("service", "logs", "--no-task-ids", "talker").stdout
    assert re.search(r"^talker\.1@\S+\s+\| hello-from-", out, re.M), out
    raw = docker.run("service", "logs", "--raw", "-t", "talker").stdout
    assert re.match(r"^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d+Z hello-from-", raw), raw


def test_d3_stale_version_and_rm(fresh: tuple[Daemon, Docker]) -> None:
    daemon, docker = fresh
    docker.run("service", "create", "-d", "--name", "stale", "busybox", "sleep", "1000")
    svc = json.loads(docker.run("service", "inspect", "stale").stdout)[0]
    old = svc["Version"]["Index"]
    docker.run("service", "scale", "-d", "stale=2")
    resp = daemon.api("POST", f"/v1.50/services/{svc['ID']}/update?version={old}", json=svc["Spec"])
    assert resp.status_code == 500 and "update out of sequence" in resp.json()["message"]
    assert docker.run("service", "rm", "stale").stdout.strip() == "stale"
    gone = docker.run("service", "inspect", "stale", check=False)
    assert gone.returncode == 1 and "no such service: stale" in gone.stderr.lower()

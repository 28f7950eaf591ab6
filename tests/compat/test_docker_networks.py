"""The real `docker` CLI (28.x) with overlay networks and published ports (issue 4, control plane):
network create/inspect/ls/rm, service create --network --publish, PORTS and VirtualIPs."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.compat.test_docker_cli import Docker
from tests.daemon import Daemon, wait_for

pytestmark = [pytest.mark.compat, pytest.mark.xdist_group("compat-docker-networks")]


@pytest.fixture(scope="module")
def docker(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Docker]:
    with Daemon(tmp_path_factory.mktemp("compat-networks")) as daemon:
        cli = Docker(daemon, Path(tmp_path_factory.mktemp("docker-config")))
        cli.run("swarm", "init", "--advertise-addr", "127.0.0.1")
        yield cli


def test_network_and_published_service(docker: Docker) -> None:
    net_id = docker.run("network", "create", "-d", "overlay", "--attachable", "backend").stdout.strip()
    assert len(net_id) == 25
    fmt = "{{.Scope}} {{.Driver}} {{.Attachable}}"
    assert docker.run("network", "inspect", "backend", "--format", fmt).stdout.strip() == "swarm overlay true"
    names = docker.run("network", "ls", "--format", "{{.Name}}").stdout.split()
    assert "backend" in names and "ingress" in names

    docker.run("service", "create", "-d", "--network", "backend", "--publish", "8080:80", "--name", "api",
               "busybox:latest", "sleep", "1000")
    assert docker.run("service", "ls", "--format", "{{.Ports}}").stdout.strip() == "*:8080->80/tcp"
    vips = docker.run("service", "inspect", "api", "--format", "{{len .Endpoint.VirtualIPs}}")
    assert vips.stdout.strip() == "2"

    busy = docker.run("network", "rm", "backend", check=False)
    assert busy.returncode != 0 and "is in use by service api" in busy.stderr
    clash = docker.run("service", "create", "-d", "--publish", "8080:81", "--name", "other",
                       "busybox:latest", "sleep", "1000", check=False)
    assert clash.returncode != 0 and "port '8080' is already in use by service 'api'" in clash.stderr

    docker.run("service", "rm", "api")

    def removed() -> bool:
        proc = docker.run("network", "rm", "backend", check=False)
        return proc.returncode == 0 and proc.stdout.strip() == "backend"
    wait_for(removed, 30, "docker network rm backend after the service went")
    assert "backend" not in docker.run("network", "ls", "--format", "{{.Name}}").stdout.split()


def test_bad_network_requests_are_refused(docker: Docker) -> None:
    bridge = docker.run("network", "create", "plain", check=False)
    assert bridge.returncode != 0 and "not supported" in bridge.stderr
    sub = docker.run("network", "create", "-d", "overlay", "--subnet", "not-a-cidr", "x", check=False)
    assert sub.returncode != 0
    assert "plain" not in docker.run("network", "ls", "--format", "{{.Name}}").stdout.split()

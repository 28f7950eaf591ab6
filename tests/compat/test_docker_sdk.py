"""The Python docker SDK's services API against a real shoald (wire-protocols.md §3 D8)."""

from __future__ import annotations

from collections.abc import Iterator

import docker
import pytest

from tests.daemon import Daemon, wait_for

pytestmark = [pytest.mark.compat, pytest.mark.xdist_group("compat-sdk")]


@pytest.fixture(scope="module")
def client(tmp_path_factory: pytest.TempPathFactory) -> Iterator[docker.DockerClient]:
    with Daemon(tmp_path_factory.mktemp("compat-sdk")) as daemon:
        c = docker.DockerClient(base_url=f"unix://{daemon.socket}", timeout=30)
        c.swarm.init(advertise_addr="127.0.0.1")
        yield c
        c.close()


def test_services_create_list_tasks_scale_remove(client: docker.DockerClient) -> None:
    svc = client.services.create("busybox", ["sleep", "1000"], name="sdk", env=["A=1"],
                                 mode=docker.types.ServiceMode("replicated", replicas=2))
    assert [s.name for s in client.services.list(filters={"name": "sdk"})] == ["sdk"]

    def running(n: int) -> bool:
        svc.reload()
        return sum(t["Status"]["State"] == "running" for t in svc.tasks()) == n

    wait_for(lambda: running(2), 60, "2 running tasks")
    svc.scale(3)
    wait_for(lambda: running(3), 60, "3 running tasks")
    svc.reload()
    assert svc.attrs["Spec"]["TaskTemplate"]["ContainerSpec"]["Env"] == ["A=1"]
    svc.remove()
    assert client.services.list(filters={"name": "sdk"}) == []


def test_errors_are_docker_errors(client: docker.DockerClient) -> None:
    with pytest.raises(docker.errors.NotFound):
        client.services.get("no-such-service")
    client.services.create("busybox", ["sleep", "1000"], name="dup")
    with pytest.raises(docker.errors.APIError) as exc:
        client.services.create("busybox", ["sleep", "1000"], name="dup")
    assert exc.value.status_code == 409
    client.services.get("dup").remove()

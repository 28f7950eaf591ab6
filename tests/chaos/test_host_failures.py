"""Chaos on a 3-host lab (issue 3 §6): a host killed (`lab stop --kill`) or cut off (`lab link
down`) loses its tasks to the other hosts; when it comes back its stale containers are stopped,
so no slot ever ends with two running tasks, and every service converges to its desired count."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from tests.cluster import create, remove, running_by_slot, running_per_host, stale_running, wait_running
from tests.daemon import wait_for
from tests.lab import Lab, require_lab_host

pytestmark = [pytest.mark.integration, pytest.mark.xdist_group("lab-chaos")]


@pytest.fixture(scope="module")
def lab() -> Iterator[Lab]:
    require_lab_host()
    with Lab(nodes=3, dispatcher_heartbeat="1s") as lab:
        yield lab


def converged_without_duplicates(lab: Lab, service: str, replicas: int, avoid: str | None) -> bool:
    per_host = running_per_host(lab, service)
    slots = running_by_slot(lab, service)
    return (per_host.total() == replicas and (avoid is None or avoid not in per_host)
            and len(slots) == replicas and max(slots.values()) == 1)


@pytest.mark.parametrize("fault", ["kill", "link"])
def test_host_loss_moves_tasks_and_return_leaves_no_duplicates(lab: Lab, fault: str) -> None:
    service = f"survivor-{fault}"
    create(lab, service, replicas=6)
    wait_running(lab, service, 6)
    if fault == "kill":
        lab.stop("node3", kill=True)
    else:
        lab.link("node3", up=False)
    wait_for(lambda: converged_without_duplicates(lab, service, 6, avoid="node3"), 60,
             "6 tasks running on node1/node2 after node3 was lost")
    # `service ls` counts 6/6: the lost host's last reports are not counted as running.
    status = next(s["ServiceStatus"] for s in lab.api("node1", "GET", "/v1.50/services",
                                                        params={"status": "1"}).json()
                  if s["Spec"]["Name"] == service)
    assert (status["RunningTasks"], status["DesiredTasks"]) == (6, 6), status
    if fault == "kill":
        lab.start("node3")
    else:
        lab.link("node3", up=True)
    lab.wait_ready(timeout=60)
    # Back: the stale containers on node3 are stopped; every slot has exactly one running task.
    wait_for(lambda: converged_without_duplicates(lab, service, 6, avoid=None)
             and not stale_running(lab, service), 60, "node3's stale tasks to stop")
    remove(lab, service)


def test_global_service_returns_to_a_recovered_host(lab: Lab) -> None:
    create(lab, "g-chaos", mode_global=True)
    wait_running(lab, "g-chaos", 3)
    lab.stop("node2", kill=True)
    assert wait_running(lab, "g-chaos", 2) == {"node1": 1, "node3": 1}
    lab.start("node2")
    lab.wait_ready(timeout=60)
    assert wait_running(lab, "g-chaos", 3) == {"node1": 1, "node2": 1, "node3": 1}
    remove(lab, "g-chaos")

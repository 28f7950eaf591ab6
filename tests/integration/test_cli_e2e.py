"""The `shoal` CLI end to end against a real shoald: what a user types and sees (issue 2 §7).

Covers convergence progress and its failure exit, table/JSON/template output, history rows,
logs, scaling, limits visible in the container's cgroup files, image commands, and bad input
exiting 1 while changing nothing.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.daemon import Daemon, wait_for

pytestmark = [pytest.mark.integration, pytest.mark.xdist_group("cli-e2e")]

SHOAL = str(Path(sys.executable).parent / "shoal")


class Cli:
    def __init__(self, daemon: Daemon) -> None:
        self.daemon = daemon
        self.env = {**os.environ, "SHOAL_HOST": f"unix://{daemon.socket}"}

    def __call__(self, *args: str, ok: bool = True, timeout: float = 120) -> subprocess.CompletedProcess[str]:
        proc = subprocess.run([SHOAL, *args], env=self.env, capture_output=True, text=True, timeout=timeout)
        if ok and proc.returncode != 0:
            raise AssertionError(f"shoal {' '.join(args)} -> {proc.returncode}\n{proc.stdout}\n{proc.stderr}")
        return proc

    def services(self) -> list[str]:
        return sorted(self("service", "ls", "--format", "{{.Name}}").stdout.split())

    def task_pids(self, service: str) -> list[int]:
        tasks = self.daemon.api("GET", "/v1.50/tasks?filters=" + json.dumps({"service": [service]})).json()
        return [t["Status"]["ContainerStatus"]["PID"] for t in tasks
                if t["Status"]["State"] == "running" and t["DesiredState"] == "running"]


@pytest.fixture(scope="module")
def cli(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Cli]:
    with Daemon(tmp_path_factory.mktemp("cli")) as daemon:
        c = Cli(daemon)
        c("swarm", "init", "--advertise-addr", "127.0.0.1")
        yield c


def test_create_shows_convergence_and_ls_counts(cli: Cli) -> None:
    out = cli("service", "create", "--name", "web", "--replicas", "3", "--update-monitor", "1s",
              "busybox", "httpd", "-f", "-p", "80").stdout
    lines = out.splitlines()
    assert re.fullmatch(r"[0-9a-z]{25}", lines[0]), out
    assert "overall progress: 3 out of 3 tasks" in out
    assert lines[-1].startswith("verify: Service ") and lines[-1].endswith("converged"), out
    ls = cli("service", "ls").stdout
    assert re.search(r"^\w{12}\s+web\s+replicated\s+3/3\s+busybox", ls, re.M), ls
    assert cli("service", "ls", "--format", "{{.Name}} {{.Replicas}}").stdout.strip() == "web 3/3"


def test_scale_and_ps_history(cli: Cli) -> None:
    cli("service", "create", "-d", "--name", "scaler", "--init", "busybox", "sleep", "100000")
    out = cli("service", "scale", "scaler=5")
    assert out.stdout.startswith("scaler scaled to 5")
    wait_for(lambda: len(cli.task_pids("scaler")) == 5, 60, "5 running")
    victim = cli.task_pids("scaler")[0]
    os.kill(victim, 9)
    wait_for(lambda: len(cli.task_pids("scaler")) == 5 and victim not in cli.task_pids("scaler"), 60,
             "a replacement for the killed task")
    ps = cli("service", "ps", "scaler").stdout
    assert ps.splitlines()[0].split()[:4] == ["ID", "NAME", "IMAGE", "NODE"], ps
    assert re.search(r"\\_ scaler\.\d+", ps), ps  # a history row for the failed task
    assert "Failed" in ps or "Shutdown" in ps, ps


def test_limits_are_enforced_by_cgroups(cli: Cli) -> None:
    cli("service", "create", "-d", "--name", "lim", "--limit-memory", "64M", "--limit-cpu", "0.5",
        "--limit-pids", "50", "busybox", "sleep", "1000")
    wait_for(lambda: len(cli.task_pids("lim")) == 1, 60, "lim running")
    pid = cli.task_pids("lim")[0]

    def cgroup_file(controller: str, name: str) -> str:
        for line in Path(f"/proc/{pid}/cgroup").read_text().splitlines():
            _, ctrls, path = line.split(":", 2)
            if controller in ctrls.split(","):
                return (Path("/sys/fs/cgroup") / controller / path.lstrip("/") / name).read_text().strip()
        raise AssertionError(f"no {controller} cgroup for {pid}")

    assert cgroup_file("memory", "memory.limit_in_bytes") == str(64 * 1024 * 1024)
    assert cgroup_file("cpu", "cpu.cfs_quota_us") == "50000"
    assert cgroup_file("pids", "pids.max") == "50"
    limit_file = "/sys/fs/cgroup/memory/memory.limit_in_bytes"
    inside = subprocess.run(["nsenter", "-t", str(pid), "-m", "cat", limit_file],
                            capture_output=True, text=True)
    assert inside.stdout.strip() == str(64 * 1024 * 1024), inside.stderr
    cli("service", "rm", "lim")


def test_logs_and_inspect(cli: Cli) -> None:
    cli("service", "create", "-d", "--name", "talk", "busybox", "sh", "-c", "echo hi-there; exec sleep 1000")
    wait_for(lambda: "hi-there" in cli("service", "logs", "talk").stdout, 60, "the log line")
    logs = cli("service", "logs", "--no-task-ids", "-t", "talk").stdout
    assert re.search(r"^talk\.1@\S+\s+\| \d{4}-\d\d-\d\dT\S+ hi-there", logs, re.M) or \
        re.search(r"\d{4}-\d\d-\d\dT\S+\s+talk\.1@\S+\s+\| hi-there", logs), logs
    data = json.loads(cli("service", "inspect", "talk").stdout)
    assert data[0]["Spec"]["Name"] == "talk"
    assert "ID:" in cli("service", "inspect", "--pretty", "talk").stdout
    cli("service", "rm", "talk")


def test_unknown_image_fails_with_reason_and_keeps_service(cli: Cli) -> None:
    out = cli("service", "create", "--name", "ghost", "--timeout", "60s", "nope", ok=False)
    assert out.returncode != 0
    assert "No such image: nope" in out.stdout + out.stderr
    assert "ghost" in cli.services()
    ps = cli("service", "ps", "ghost", "--no-trunc").stdout
    assert "No such image: nope" in ps and "Rejected" in ps, ps
    cli("service", "rm", "ghost")


@pytest.mark.parametrize("args, reason", [
    (["--replicas", "-1"], "replicas"),
    (["--limit-memory", "12zz"], "12zz"),
    (["--restart-condition", "sometimes"], "sometimes"),
    (["--constraint", "node.role=manager"], "constraint"),
    (["--name", "bad_name!"], "name"),
])
def test_bad_flags_exit_1_and_change_nothing(cli: Cli, args: list[str], reason: str) -> None:
    before = cli.services()
    out = cli("service", "create", "-d", *(args if "--name" in args else ["--name", "x1", *args]),
              "busybox", "sleep", "1", ok=False)
    assert out.returncode == 1, (out.stdout, out.stderr)
    assert reason in out.stderr, out.stderr
    assert cli.services() == before


def test_image_commands(cli: Cli, tmp_path: Path) -> None:
    rootfs = tmp_path / "rootfs"
    (rootfs / "bin").mkdir(parents=True)
    (rootfs / "bin" / "busybox").write_bytes(Path("/bin/busybox").read_bytes())
    (rootfs / "bin" / "busybox").chmod(0o755)
    (rootfs / "bin" / "sh").symlink_to("busybox")
    image_id = cli("image", "import", str(rootfs), "mini:1").stdout.strip()
    assert image_id.startswith("sha256:"), image_id
    cli("image", "tag", "mini:1", "mini:2")
    ls = cli("image", "ls").stdout
    assert re.search(r"^mini\s+1\s", ls, re.M) and re.search(r"^mini\s+2\s", ls, re.M), ls
    cli("image", "rm", "mini:2")
    assert "mini:2" not in cli("image", "ls", "--format", "{{.Repository}}:{{.Tag}}").stdout
    bad = tmp_path / "bad.tar"
    bad.write_bytes(b"this is not a tar archive")
    out = cli("image", "load", "-i", str(bad), ok=False)
    assert out.returncode == 1 and out.stderr.strip()


def test_version_and_info(cli: Cli) -> None:
    assert "Server" in cli("version").stdout
    info = cli("info").stdout
    assert "Swarm: active" in info, info

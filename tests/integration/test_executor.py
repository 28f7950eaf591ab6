"""Integration tests of CrunExecutor and the log collector on the real host (root, crun, iproute2).

Each test gets its own data root under /tmp and its own bridge subnet, and removes everything it
made (containers, mounts, netns, veths, cgroups, the bridge) even when it fails.
"""

from __future__ import annotations

import asyncio
import contextlib
import datetime as dt
import itertools
import os
import shutil
import subprocess
import tempfile
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path

import msgspec
import pytest

from shoal.agent.exec.crun import CrunExecutor
from shoal.agent.exec.host import cgroup_dirs
from shoal.agent.images.model import ImageConfig, ResolvedImage
from shoal.agent.logs import FileLogSource, LogCollector
from shoal.api.types import ContainerSpec, Limits, NodeResources, Resources, Task, TaskSpec

pytestmark = [
    pytest.mark.integration,
    pytest.mark.skipif(os.geteuid() != 0 or shutil.which("crun") is None, reason="needs root and crun"),
]
SECOND = 1_000_000_000
_subnets = itertools.count(1)


def new_id() -> str:
    return os.urandom(13).hex()[:25]


def _free_cidr() -> str:
    """A /24 in 10.2xx that no host route touches (other helpers' bridges may exist)."""
    routes = subprocess.run(["ip", "-4", "route", "show", "table", "all"], capture_output=True,
                            text=True, check=True).stdout
    while True:
        n = next(_subnets) + os.getpid() % 200
        cidr = f"10.{200 + n // 250 % 50}.{n % 250}.0/24"
        if cidr.rsplit(".", 1)[0] + "." not in routes:
            return cidr


def _busybox_layer(path: Path) -> Path:
    (path / "bin").mkdir(parents=True)
    shutil.copy("/usr/bin/busybox", path / "bin/busybox")
    applets = subprocess.run(["/usr/bin/busybox", "--list"], capture_output=True, text=True,
                             check=True).stdout.split()
    for applet in applets:
        if applet != "busybox":  # relative links: absolute ones would point at the host path
            os.symlink("busybox", path / "bin" / applet)
    for d in ("etc", "tmp", "proc", "sys", "dev", "srv"):
        (path / d).mkdir()
    (path / "etc/passwd").write_text("root:x:0:0:root:/root:/bin/sh\n"
                                     "app:x:1234:2345:app:/srv:/bin/sh\n")
    (path / "etc/group").write_text("root:x:0:\napp:x:2345:\nextra:x:3456:\n")
    (path / "srv/index.html").write_text("hello from shoal\n")
    return path


class StaticImages:
    def __init__(self, image: ResolvedImage) -> None:
        self.image = image

    def resolve(self, ref: str) -> ResolvedImage:
        return self.image


class Env:
    def __init__(self, root: Path, executor: CrunExecutor, images: StaticImages) -> None:
        self.root, self.ex, self.images = root, executor, images

    def new_executor(self) -> CrunExecutor:
        return CrunExecutor(data_root=self.root / "d", images=self.images,
                            bridge_cidr=str(self.ex._ipam.network), capacity=NodeResources())


def task(*, init: bool | None = None, grace_ns: int | None = None,
         resources: Resources | None = None, **cs: object) -> Task:
    tid = new_id()
    spec = ContainerSpec(image="busybox", init=init, stop_grace_period=grace_ns, **cs)  # type: ignore[arg-type]
    return Task(id=tid, name=f"svc.1.{tid}", spec=TaskSpec(container_spec=spec, resources=resources))


@contextlib.asynccontextmanager
async def environment() -> AsyncIterator[Env]:
    root = Path(tempfile.mkdtemp(prefix="shoal-ex-"))
    layer = _busybox_layer(root / "layer")
    images = StaticImages(ResolvedImage(image_id="sha256:test", layers=[layer],
                                        config=ImageConfig(cmd=["sh"], env=["PATH=/bin", "FROM_IMAGE=1"])))
    ex = CrunExecutor(data_root=root / "d", images=images, bridge_cidr=_free_cidr(),
                      capacity=NodeResources(nano_cpus=2 * SECOND, memory_bytes=1 << 30))
    try:
        await ex.setup()
        yield Env(root, ex, images)
    finally:
        await _cleanup(ex, root)


async def _cleanup(ex: CrunExecutor, root: Path) -> None:
    for tid in ex.known_task_ids():
        with contextlib.suppress(Exception):
            await ex.remove(tid)
    await ex.teardown(remove_bridge=True)
    # Belt and braces for a failed remove: nothing of this data root may outlive the test.
    for line in Path("/proc/self/mounts").read_text().splitlines():
        if str(root) in line.split()[1]:
            subprocess.run(["umount", "-l", line.split()[1]], check=False)
    for ns in subprocess.run(["ip", "netns", "list"], capture_output=True, text=True).stdout.split():
        if ns.startswith(f"shoal-{ex.paths.tag}-"):
            subprocess.run(["ip", "netns", "del", ns], check=False)
    shutil.rmtree(root, ignore_errors=True)


def run(body: Callable[[Env], Awaitable[None]]) -> None:
    async def main() -> None:
        async with environment() as env:
            await asyncio.wait_for(body(env), 60)
    asyncio.run(main())


async def until(cond: Callable[[], bool], timeout: float = 10.0) -> None:
    deadline = asyncio.get_running_loop().time() + timeout
    while not cond():
        assert asyncio.get_running_loop().time() < deadline, "condition not met in time"
        await asyncio.sleep(0.02)  # polling a condition with a deadline


async def run_to_exit(env: Env, t: Task) -> tuple[int | None, str]:
    await env.ex.prepare(t)
    await env.ex.start(t)
    code = await env.ex.wait(t.id)
    cdir = env.ex.paths.container_dir(t.id)
    return code, (cdir / "stdout.raw").read_text() + (cdir / "stderr.raw").read_text()


def test_httpd_reachable_through_bridge() -> None:
    async def body(env: Env) -> None:
        t = task(args=["httpd", "-f", "-p", "80", "-h", "/srv"])
        await env.ex.prepare(t)
        info = await env.ex.start(t)
        assert info.running and info.pid > 0 and info.address
        out = ""
        for _ in range(50):  # httpd binds a moment after start: retry with a bound
            proc = await asyncio.create_subprocess_exec(
                "curl", "-s", "--max-time", "2", f"http://{info.address}:80/index.html",
                stdout=asyncio.subprocess.PIPE)
            out = (await proc.communicate())[0].decode()
            if out:
                break
            await asyncio.sleep(0.05)  # poll interval of the bounded retry above
        assert out == "hello from shoal\n"
    run(body)


def test_env_workdir_user_hostname() -> None:
    async def body(env: Env) -> None:
        t = task(command=["sh", "-c"], args=["echo $FROM_IMAGE $MINE $HOSTNAME; pwd; id; hostname"],
                 env=["MINE=x", "FROM_IMAGE=2"], dir="/srv", user="app:extra", hostname="h1")
        code, out = await run_to_exit(env, t)
        assert code == 0, out
        assert out.splitlines() == ["2 x h1", "/srv", "uid=1234(app) gid=3456(extra)",
                                    "h1"]
        t2 = task(args=["hostname"])
        code, out = await run_to_exit(env, t2)
        assert (code, out) == (0, f"svc.1.{t2.id}\n")
    run(body)


def test_limits_visible_in_container() -> None:
    async def body(env: Env) -> None:
        limits = Limits(nano_cpus=SECOND // 2, memory_bytes=64 << 20, pids=50)
        script = ("cat /sys/fs/cgroup/memory/memory.limit_in_bytes /sys/fs/cgroup/cpu/cpu.cfs_quota_us "
                  "/sys/fs/cgroup/cpu/cpu.cfs_period_us /sys/fs/cgroup/pids/pids.max")
        t = task(args=["sh", "-c", script], resources=Resources(limits=limits))
        code, out = await run_to_exit(env, t)
        assert code == 0, out
        assert out.split() == [str(64 << 20), "50000", "100000", "50"]
    run(body)


def test_exit_code_collected() -> None:
    async def body(env: Env) -> None:
        assert await run_to_exit(env, task(args=["sh", "-c", "exit 7"])) == (7, "")
    run(body)


def test_stop_grace_then_kill_and_init_term() -> None:
    async def body(env: Env) -> None:
        plain = task(args=["sleep", "1000"], grace_ns=SECOND)
        tini = task(args=["sleep", "1000"], init=True, grace_ns=30 * SECOND)
        for t in (plain, tini):
            await env.ex.prepare(t)
            await env.ex.start(t)
        loop = asyncio.get_running_loop()
        t0 = loop.time()
        assert await env.ex.shutdown(plain) == 137  # PID-1 sleep ignores TERM: KILL after 1 s
        assert 0.9 < loop.time() - t0 < 5
        t0 = loop.time()
        assert await env.ex.shutdown(tini) == 143  # tini forwards TERM
        assert loop.time() - t0 < 5
    run(body)


def test_logs_collected_with_timestamps_and_rotation() -> None:
    async def body(env: Env) -> None:
        collector = LogCollector(env.root / "d", max_bytes=4096, poll_s=0.05)
        source = FileLogSource(env.root / "d", collector)
        collector.start()
        try:
            before = dt.datetime.now(dt.UTC)
            t = task(args=["sh", "-c", "for i in $(seq 1 100); do echo out$i; done; echo err >&2; "
                                       "printf partial"])
            assert (await run_to_exit(env, t))[0] == 0
        finally:
            await collector.stop()
        cdir = env.ex.paths.container_dir(t.id)
        assert (cdir / "log.jsonl.1").exists()  # 100 records > 4 KiB: rotated
        assert (cdir / "stdout.raw").stat().st_size == 0
        lines = [ln async for ln in source.read(t.id, tail=None, since=None, follow=False)]
        assert lines and all(before <= ln.timestamp <= dt.datetime.now(dt.UTC) for ln in lines)
        stdout = [ln.message for ln in lines if ln.stream == 1]
        assert stdout[-1] == b"partial" and stdout[-2] == b"out100"
        assert [ln.message for ln in lines if ln.stream == 2] == [b"err"]
        tail = [ln.message async for ln in source.read(t.id, tail=2, since=None, follow=False)]
        assert len(tail) == 2 and b"partial" in tail
    run(body)


def test_follow_yields_new_lines() -> None:
    async def body(env: Env) -> None:
        source = FileLogSource(env.root / "d", LogCollector(env.root / "d"), poll_s=0.05)
        t = task(args=["sh", "-c", "echo one; read x < /dev/null; sleep 0.3; echo two; sleep 1000"])
        await env.ex.prepare(t)
        await env.ex.start(t)
        got: list[bytes] = []
        stream = source.read(t.id, tail=None, since=None, follow=True)
        async for ln in stream:
            got.append(ln.message)
            if len(got) == 2:
                break
        await stream.aclose()  # type: ignore[attr-defined]
        assert got == [b"one", b"two"]
    run(body)


def test_second_executor_adopts_running_container() -> None:
    async def body(env: Env) -> None:
        t = task(args=["sleep", "1000"], init=True)
        await env.ex.prepare(t)
        info = await env.ex.start(t)
        other = env.new_executor()
        assert t.id in other.known_task_ids()
        adopted = await other.inspect(t.id)
        assert adopted is not None and adopted.running and adopted.pid == info.pid
        assert adopted.address == info.address
        assert await other.shutdown(t) in (143, None)
        assert (await other.inspect(t.id)) is not None
        await other.remove(t.id)
        assert await other.inspect(t.id) is None
    run(body)


def test_remove_leaves_nothing() -> None:
    async def body(env: Env) -> None:
        t = task(args=["sleep", "1000"])
        await env.ex.prepare(t)
        await env.ex.start(t)
        ex = env.ex
        netns, veth = ex.paths.netns(t.id), ex.paths.veth(t.id)
        assert cgroup_dirs(ex.paths.cgroup_path(t.id))
        await ex.remove(t.id)
        await ex.remove(t.id)  # idempotent
        assert str(ex.paths.container_dir(t.id)) not in Path("/proc/self/mounts").read_text()
        assert netns not in subprocess.run(["ip", "netns", "list"], capture_output=True, text=True).stdout
        assert subprocess.run(["ip", "link", "show", veth], capture_output=True).returncode != 0
        assert cgroup_dirs(ex.paths.cgroup_path(t.id)) == []
        assert ex.known_task_ids() == []
        assert ex._ipam.lookup(t.id) is None
        await ex.forget_logs(t.id)
        assert not ex.paths.container_dir(t.id).exists()
    run(body)


def test_overlapping_cidr_refused() -> None:
    async def main() -> None:
        root = Path(tempfile.mkdtemp(prefix="shoal-ex-"))
        try:
            ex = CrunExecutor(data_root=root, images=StaticImages(msgspec.convert(
                {"image_id": "x", "layers": [], "config": {}}, ResolvedImage)),
                bridge_cidr="192.0.2.128/25", capacity=NodeResources())
            with pytest.raises(ValueError, match="overlaps"):
                await ex.setup()
            assert not ex.paths.crun_root.exists()
            assert subprocess.run(["ip", "link", "show", ex.paths.bridge],
                                  capture_output=True).returncode != 0
        finally:
            shutil.rmtree(root, ignore_errors=True)
    asyncio.run(main())

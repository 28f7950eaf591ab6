"""CrunExecutor: the real Executor (agent/exec/protocol.py) on crun, overlayfs, cgroup v1, a bridge.

The agent's task runner calls it; the daemon calls `setup()` once at start and `teardown()` on
swarm leave. Everything of a task lives under D/containers/<task-id>/ and in host objects named
from the data root (agent/exec/paths.py), so a restarted daemon on the same data root adopts the
containers it left running: `inspect` asks crun, `shutdown`/`remove` work on any container.

Exit codes: shoald is a child subreaper, so container inits started here are re-parented to this
process and `os.waitpid` gives the real status. A pidfd tells the event loop when to call it, so
no thread is blocked and asyncio's own child watcher (which waits on specific PIDs) is untouched.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import shutil
import signal
from pathlib import Path
from typing import Protocol

from shoal.agent import netstate
from shoal.agent.exec import bundle, host
from shoal.agent.exec.paths import HostPaths
from shoal.agent.exec.protocol import ContainerInfo, ExecError
from shoal.agent.exec.runtime import Runtime
from shoal.agent.exec.spec import container_hostname, parse_signal
from shoal.agent.images.model import ResolvedImage
from shoal.agent.network import bridge, lb
from shoal.agent.network.host import HostNetwork
from shoal.agent.network.ipam import AddressPoolExhausted, Ipam
from shoal.api.defaults import STOP_GRACE_PERIOD_NS
from shoal.api.types import ContainerSpec, NodeResources, Task

log = logging.getLogger("shoal.agent.exec")

KILL_TIMEOUT_S = 30.0  # after SIGKILL; longer means a process stuck in the kernel


class ImageResolver(Protocol):
    def resolve(self, ref: str) -> ResolvedImage:
        """The image for `ref`; raises ImageNotFound."""
        ...


class CrunExecutor:
    def __init__(self, *, data_root: Path, images: ImageResolver, bridge_cidr: str,
                 capacity: NodeResources, runtime: str = "crun",
                 network: HostNetwork | None = None) -> None:
        self.paths = HostPaths(data_root)
        binary = shutil.which(runtime) or shutil.which("runc")
        if binary is None:
            raise ExecError(f"OCI runtime {runtime!r} not found (nor runc)")
        self._rt = Runtime(binary, self.paths.crun_root)
        self._images = images
        self._capacity = capacity
        self._ipam = Ipam(self.paths.network_dir / "ipam.json", bridge_cidr)
        self._watchers: dict[str, asyncio.Task[int | None]] = {}
        self._network = network  # overlays, DNS, VIPs (None: the host bridge only)

    # ------------------------------------------------------------------------------- host
    async def setup(self) -> None:
        """Host preparation; idempotent. ValueError if the bridge cidr overlaps a host route."""
        # The subnet check comes first: a refused cidr leaves the host untouched.
        await bridge.check_cidr_free(str(self._ipam.network), self.paths.bridge)
        await asyncio.to_thread(host.fix_hybrid_cgroups)
        host.become_subreaper()
        self.paths.crun_root.mkdir(parents=True, exist_ok=True)
        self.paths.containers.mkdir(parents=True, exist_ok=True)
        await bridge.ensure_bridge(self.paths.bridge, str(self._ipam.gateway), self._ipam.prefixlen)

    async def teardown(self, *, remove_bridge: bool) -> None:
        """Undo setup's per-instance objects (never the host-wide cgroup fix)."""
        if remove_bridge:
            await bridge.remove_bridge(self.paths.bridge)
        # OSError: a task cgroup is still in use, or containers still exist; their remove()
        # comes later.
        with contextlib.suppress(OSError):
            host.remove_cgroup(self.paths.cgroup_parent)
        with contextlib.suppress(OSError):
            self.paths.crun_root.rmdir()

    def capacity(self) -> NodeResources:
        return self._capacity

    # ------------------------------------------------------------------------------- tasks
    async def prepare(self, task: Task) -> None:
        cs = task.spec.container_spec
        if cs is None or not cs.image:
            raise ExecError("task has no container spec")
        image = self._images.resolve(cs.image)
        cdir = self.paths.container_dir(task.id)
        cdir.mkdir(parents=True, exist_ok=True)
        await asyncio.to_thread(bundle.mount_overlay, image.layers, cdir)
        try:
            address = self._ipam.allocate(task.id)
        except AddressPoolExhausted as e:
            raise ExecError(str(e)) from e
        netns = self.paths.netns_path(task.id)
        if not netns.exists() or not await bridge.link_exists(self.paths.veth(task.id)):
            await bridge.attach(self.paths.netns(task.id), self.paths.veth(task.id),
                                self.paths.bridge, address, self._ipam.prefixlen)
        overlays = await self._attach_overlays(task, cdir)
        hostname = container_hostname(cs, task.name, task.id)
        bundle.write_etc_files(cdir, cs, hostname, address, embedded_dns=bool(overlays))
        config = bundle.build_config(task, image, cdir, netns=netns,
                                     cgroups_path=self.paths.cgroup_path(task.id))
        bundle.write_config(cdir, config)

    async def start(self, task: Task) -> ContainerInfo:
        cdir = self.paths.container_dir(task.id)
        if not (cdir / "config.json").exists():
            raise ExecError(f"task {task.id} is not prepared")
        (cdir / "exit_code").unlink(missing_ok=True)
        pid = await self._rt.run_detached(task.id, cdir)
        # Watch from now on: the exit is reaped promptly and the PID cannot be recycled under us.
        self._watch(task.id, pid)
        return ContainerInfo(task_id=task.id, container_id=task.id, pid=pid, running=True,
                             address=self._ipam.lookup(task.id) or "")

    async def wait(self, task_id: str) -> int | None:
        watcher = self._watchers.get(task_id)
        if watcher is None:
            info = await self.inspect(task_id)
            if info is None or not info.running:
                return self._recorded_exit(task_id)
            watcher = self._watch(task_id, info.pid)
        return await asyncio.shield(watcher)

    async def shutdown(self, task: Task) -> int | None:
        info = await self.inspect(task.id)
        if info is None:
            return self._recorded_exit(task.id)
        if not info.running:
            return await self.wait(task.id)
        cs = task.spec.container_spec or ContainerSpec()
        watcher = self._watchers.get(task.id) or self._watch(task.id, info.pid)
        if self._network is not None and (netstate.attachments_of(task) or self._network.publishes(task.id)):
            # Drain: the manager's NetworkState, which took this task out of every VIP table,
            # DNS and the host-mode ports as soon as its desired state passed RUNNING, reaches
            # every host first.
            await asyncio.sleep(lb.DRAIN_DELAY)
        grace = STOP_GRACE_PERIOD_NS if cs.stop_grace_period is None else cs.stop_grace_period
        await self._rt.kill(task.id, parse_signal(cs.stop_signal))
        try:
            return await asyncio.wait_for(asyncio.shield(watcher), grace / 1e9)
        except TimeoutError:
            pass
        await self._rt.kill(task.id, int(signal.SIGKILL))
        try:
            return await asyncio.wait_for(asyncio.shield(watcher), KILL_TIMEOUT_S)
        except TimeoutError:
            raise ExecError(f"container {task.id} did not die after SIGKILL", temporary=True) from None

    async def remove(self, task_id: str) -> None:
        info = await self.inspect(task_id)
        if info is not None and info.running and task_id not in self._watchers:
            self._watch(task_id, info.pid)
        await self._rt.delete(task_id)
        watcher = self._watchers.get(task_id)
        if watcher is not None:
            try:  # delete -f killed it: reap it so no zombie is left behind
                await asyncio.wait_for(asyncio.shield(watcher), KILL_TIMEOUT_S)
            except TimeoutError:
                raise ExecError(f"container {task_id} did not exit", temporary=True) from None
        cdir = self.paths.container_dir(task_id)
        await asyncio.to_thread(bundle.unmount, cdir / "rootfs")
        if self._network is not None:
            await self._network.detach_task(task_id, self.paths.netns(task_id),
                                            bundle.read_attachments(cdir))
        await bridge.detach(self.paths.netns(task_id), self.paths.veth(task_id))
        self._ipam.release(task_id)
        try:
            host.remove_cgroup(self.paths.cgroup_path(task_id))
        except OSError as e:
            raise ExecError(f"cannot remove cgroup of {task_id}: {e}", temporary=True) from e
        await asyncio.to_thread(bundle.remove_bundle, cdir)
        self._watchers.pop(task_id, None)

    async def forget_logs(self, task_id: str) -> None:
        cdir = self.paths.container_dir(task_id)
        if (cdir / "config.json").exists() or (cdir / "rootfs").exists():
            for name in ("stdout.raw", "stderr.raw", "log.jsonl", "log.jsonl.1"):
                (cdir / name).unlink(missing_ok=True)
        else:
            await asyncio.to_thread(shutil.rmtree, cdir, True)

    async def inspect(self, task_id: str) -> ContainerInfo | None:
        state = await self._rt.state(task_id)
        if state is None:
            return None
        running = state.get("status") == "running"
        if running:
            await self._adopt_overlays(task_id)
        return ContainerInfo(task_id=task_id, container_id=task_id,
                             pid=int(state.get("pid") or 0) if running else 0, running=running,
                             address=self._ipam.lookup(task_id) or "")

    def known_task_ids(self) -> list[str]:
        try:
            dirs = list(self.paths.containers.iterdir())
        except FileNotFoundError:
            return []
        return sorted(d.name for d in dirs
                      if (d / "config.json").exists() or (d / "rootfs").exists())

    # ------------------------------------------------------------------------------- overlays
    async def _attach_overlays(self, task: Task, cdir: Path) -> list[netstate.LocalAttachment]:
        """eth1, eth2, … on the task's overlay networks, DNS, VIPs; recorded in the bundle."""
        if self._network is None:
            return []
        atts = await self._network.attach_task(task, self.paths.netns(task.id),
                                               self.paths.netns_path(task.id))
        bundle.write_attachments(cdir, atts)
        return atts

    async def _adopt_overlays(self, task_id: str) -> None:
        """A running container this process did not prepare (shoald restarted): serve it again."""
        network = self._network
        if network is None or network.uses_networks(task_id):
            return
        atts = bundle.read_attachments(self.paths.container_dir(task_id))
        try:
            await network.adopt_task(task_id, self.paths.netns(task_id),
                                     self.paths.netns_path(task_id), atts)
        except (ExecError, OSError) as e:
            log.warning("task %s: cannot serve its overlay networks again: %s", task_id, e)

    # ------------------------------------------------------------------------------- exits
    def _watch(self, task_id: str, pid: int) -> asyncio.Task[int | None]:
        watcher = asyncio.ensure_future(self._collect_exit(task_id, pid))
        self._watchers[task_id] = watcher
        return watcher

    async def _collect_exit(self, task_id: str, pid: int) -> int | None:
        try:
            fd = os.pidfd_open(pid)
        except ProcessLookupError:
            fd = -1  # already reaped (by an earlier watcher): only the recorded code is left
        if fd >= 0:
            exited = asyncio.Event()
            loop = asyncio.get_running_loop()
            loop.add_reader(fd, exited.set)  # a pidfd turns readable when the process exits
            try:
                await exited.wait()
            finally:
                loop.remove_reader(fd)
                os.close(fd)
        try:
            _, status = os.waitpid(pid, 0)
        except ChildProcessError:
            return self._recorded_exit(task_id)  # adopted: not our child, the code is lost
        code = os.waitstatus_to_exitcode(status)
        code = 128 - code if code < 0 else code  # killed by signal N -> 128+N, as Docker
        cdir = self.paths.container_dir(task_id)
        if cdir.is_dir():
            (cdir / "exit_code").write_text(f"{code}\n")
        return code

    def _recorded_exit(self, task_id: str) -> int | None:
        try:
            return int((self.paths.container_dir(task_id) / "exit_code").read_text())
        except (FileNotFoundError, ValueError):
            return None

"""A real `shoald` subprocess for integration and compatibility tests, and `wait_for`.

`Daemon(tmp_dir)` starts the .venv's shoald with values unique to it (data root and API socket
in tmp_dir, a bridge subnet no host route and no other daemon of this run uses, a cluster port
on 127.0.0.1 that the kernel picks at `swarm init`), preloads build/images/busybox.tar, and
waits until `/_ping` answers. Two of them on one machine make a two-node swarm: `manager_addr()`
is the manager's cluster address ("127.0.0.1:PORT") and `join_token()` its worker token.
`stop()` sends SIGTERM and then removes whatever the daemon left on the host (containers, mounts,
netns, cgroups, bridge), since shoald deliberately leaves containers running when it stops. Used
as a context manager by tests/conftest.py, tests/compat/* and tests/integration/test_multinode.py.
"""

from __future__ import annotations

import contextlib
import hashlib
import ipaddress
import os
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from types import TracebackType
from typing import Any

import httpx

from shoal.lab.host import kill_containers

REPO_ROOT = Path(__file__).resolve().parent.parent
BUSYBOX_TAR = REPO_ROOT / "build" / "images" / "busybox.tar"
SHOALD = Path(sys.executable).parent / "shoald"
START_TIMEOUT_S = 60.0
STOP_TIMEOUT_S = 30.0


def wait_for(predicate: Callable[[], Any], timeout: float, message: str, interval: float = 0.1) -> Any:
    """Poll `predicate` until it returns something truthy (returned) or `timeout` seconds pass."""
    deadline = time.monotonic() + timeout
    last_error: BaseException | None = None
    while True:
        try:
            value = predicate()
            if value:
                return value
        except Exception as e:  # a transient failure (e.g. the daemon restarting) is retried
            last_error = e
        if time.monotonic() > deadline:
            extra = f" (last error: {last_error!r})" if last_error else ""
            raise AssertionError(f"timed out after {timeout:.0f}s waiting for {message}{extra}")
        time.sleep(interval)


def _host_networks() -> list[ipaddress.IPv4Network]:
    out = subprocess.run(["ip", "-4", "route", "show", "table", "all"], capture_output=True, text=True).stdout
    nets = []
    for line in out.splitlines():
        first = line.split()[0] if line.split() else ""
        if first in ("default", "broadcast", "local", "unreachable", "blackhole"):
            continue
        with contextlib.suppress(ValueError):
            nets.append(ipaddress.ip_network(first, strict=False))
    return [n for n in nets if isinstance(n, ipaddress.IPv4Network)]


CIDR_CLAIMS = Path("/run/shoal/test-cidrs")


def unique_bridge_cidr(prefix: int = 24) -> str:
    """A 10.2xx.y.0/prefix subnet that no host route touches and no other live test process holds.

    Each subnet is claimed with an O_EXCL file holding the claimer's PID, so parallel pytest
    workers never pick the same one; a claim whose process is gone is taken over.
    """
    CIDR_CLAIMS.mkdir(parents=True, exist_ok=True)
    taken = _host_networks()
    step = 1 << (24 - prefix) if prefix <= 24 else 1
    for n in range(0, 50 * 256, step):
        candidate = ipaddress.ip_network(f"10.{200 + n // 256}.{n % 256}.0/{prefix}")
        if any(candidate.overlaps(t) for t in taken) or not _claim(candidate):
            continue
        return str(candidate)
    raise RuntimeError("no free 10.2xx.y.0 subnet for a test daemon")


def _claim(net: ipaddress.IPv4Network | ipaddress.IPv6Network) -> bool:
    claim = CIDR_CLAIMS / str(net.network_address)
    for _ in range(2):
        try:
            fd = os.open(claim, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644)
        except FileExistsError:
            with contextlib.suppress(OSError, ValueError):
                owner = int(claim.read_text() or "0")
                if owner and not Path(f"/proc/{owner}").exists():
                    claim.unlink()  # its process is gone: the subnet is free again
                    continue
            return False
        os.write(fd, str(os.getpid()).encode())
        os.close(fd)
        return True
    return False


def release_bridge_cidr(cidr: str) -> None:
    claim = CIDR_CLAIMS / str(ipaddress.ip_network(cidr).network_address)
    with contextlib.suppress(OSError, ValueError):
        if int(claim.read_text()) == os.getpid():
            claim.unlink()


def instance_tag(data_root: Path) -> str:
    """As shoald names its host objects (docs/architecture.md): sha256(realpath(D))[:8]."""
    return hashlib.sha256(os.path.realpath(data_root).encode()).hexdigest()[:8]


class Daemon:
    def __init__(self, tmp_dir: Path, *, extra_args: list[str] | None = None,
                 bridge_prefix: int = 24, listen_addr: str = "127.0.0.1:0") -> None:
        self.tmp_dir = Path(tmp_dir)
        self.data_root = self.tmp_dir / "data"
        self.socket = self.tmp_dir / "shoal.sock"
        self.url = "http://shoal"
        self.bridge_cidr = unique_bridge_cidr(bridge_prefix)
        self.tag = instance_tag(self.data_root) if self.data_root.exists() else ""
        self.extra_args = extra_args or []
        self.listen_addr = listen_addr
        self.proc: subprocess.Popen[bytes] | None = None
        self._client: httpx.Client | None = None

    # ---------------------------------------------------------------------------- lifecycle
    def __enter__(self) -> Daemon:
        self.start()
        return self

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        self.stop()

    @property
    def pid(self) -> int:
        assert self.proc is not None, "daemon not started"
        return self.proc.pid

    def start(self) -> None:
        self.data_root.mkdir(parents=True, exist_ok=True)
        self.tag = instance_tag(self.data_root)
        args = [str(SHOALD), "--data-root", str(self.data_root), "--host", f"unix://{self.socket}",
                "--bridge-cidr", self.bridge_cidr, "--log-level", "debug",
                "--listen-addr", self.listen_addr, *self.extra_args]
        if BUSYBOX_TAR.is_file():
            args += ["--load-image", str(BUSYBOX_TAR)]
        log = open(self.tmp_dir / "shoald.stderr", "ab")  # noqa: SIM115 - owned by the process
        self.proc = subprocess.Popen(args, stdout=log, stderr=subprocess.STDOUT, cwd=REPO_ROOT)
        log.close()
        wait_for(self._answers_ping, START_TIMEOUT_S, f"shoald to answer /_ping on {self.socket}")

    def _answers_ping(self) -> bool:
        if self.proc is not None and self.proc.poll() is not None:
            raise RuntimeError(f"shoald exited with {self.proc.returncode}:\n{self.stderr_tail()}")
        return self.api("GET", "/_ping").status_code == 200

    def stderr_tail(self, lines: int = 40) -> str:
        path = self.tmp_dir / "shoald.stderr"
        text = path.read_text(errors="replace") if path.exists() else ""
        return "\n".join(text.splitlines()[-lines:])

    def kill9(self) -> None:
        """SIGKILL the daemon (containers survive it) and wait for it to be gone."""
        assert self.proc is not None
        self.proc.kill()
        self.proc.wait(timeout=STOP_TIMEOUT_S)
        self._close_client()

    def restart(self) -> None:
        """Start again on the same data root (after kill9 or a stop without cleanup)."""
        if self.proc is not None and self.proc.poll() is None:
            self._terminate()
        self.start()

    def _terminate(self) -> None:
        assert self.proc is not None
        self.proc.send_signal(signal.SIGTERM)
        try:
            self.proc.wait(timeout=STOP_TIMEOUT_S)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait(timeout=STOP_TIMEOUT_S)
        self._close_client()

    def stop(self) -> None:
        """SIGTERM, wait, then remove what the daemon left on the host."""
        if self.proc is not None and self.proc.poll() is None:
            self._terminate()
        self._close_client()
        if self.tag:
            cleanup_host(self.tag, self.data_root)
        release_bridge_cidr(self.bridge_cidr)

    # ---------------------------------------------------------------------------- API
    def client(self) -> httpx.Client:
        if self._client is None:
            transport = httpx.HTTPTransport(uds=str(self.socket))
            self._client = httpx.Client(transport=transport, base_url=self.url, timeout=60.0)
        return self._client

    def _close_client(self) -> None:
        if self._client is not None:
            self._client.close()
            self._client = None

    def api(self, method: str, path: str, json: Any = None, **kwargs: Any) -> httpx.Response:
        return self.client().request(method, path, json=json, **kwargs)

    # ---------------------------------------------------------------------------- swarm
    def info_swarm(self) -> dict[str, Any]:
        swarm: dict[str, Any] = self.api("GET", "/v1.50/info").json()["Swarm"]
        return swarm

    def manager_addr(self) -> str:
        """This manager's cluster address, as `docker swarm join` takes it."""
        resp = self.api("GET", f"/v1.50/nodes/{self.info_swarm()['NodeID']}")
        assert resp.status_code == 200, resp.text
        addr: str = resp.json()["ManagerStatus"]["Addr"]
        return addr

    def join_token(self, role: str = "worker") -> str:
        resp = self.api("GET", "/v1.50/swarm")
        assert resp.status_code == 200, resp.text
        token: str = resp.json()["JoinTokens"][role.capitalize()]
        return token

    def join(self, manager: Daemon, token: str | None = None) -> httpx.Response:
        """POST /swarm/join on this daemon, to `manager`'s cluster port."""
        body = {"ListenAddr": "0.0.0.0:2377", "AdvertiseAddr": "127.0.0.1",
                "RemoteAddrs": [manager.manager_addr()],
                "JoinToken": manager.join_token() if token is None else token}
        return self.api("POST", "/v1.50/swarm/join", json=body)


# -------------------------------------------------------------------------------- host cleanup
def _run(*args: str) -> str:
    return subprocess.run(list(args), capture_output=True, text=True).stdout


def cleanup_host(tag: str, data_root: Path) -> None:
    """Remove the containers, mounts, netns, cgroups and bridge of instance `tag`."""
    kill_containers(tag)  # and any crun call its shoald left running
    shutil.rmtree(f"/run/shoal/crun-{tag}", ignore_errors=True)
    for mount in reversed(mounts_under(data_root)):
        _run("umount", "-l", mount)
    for ns in netns_of(tag):
        _run("ip", "netns", "delete", ns)
    for cgroup in cgroups_of(tag):
        for sub in sorted((p for p in cgroup.rglob("*") if p.is_dir()), key=lambda p: -len(p.parts)):
            with contextlib.suppress(OSError):
                sub.rmdir()
        with contextlib.suppress(OSError):
            cgroup.rmdir()
    _run("ip", "link", "delete", f"shb-{tag}")
    for line in _run("ip", "-o", "link", "show").splitlines():  # overlay bridges and vxlans
        name = line.split(":")[1].strip().split("@")[0] if line.count(":") > 1 else ""
        if name.startswith((f"o{tag[:6]}", f"x{tag[:6]}")):
            _run("ip", "link", "delete", name)


def mounts_under(data_root: Path) -> list[str]:
    root = os.path.realpath(data_root)
    with open("/proc/self/mounts", encoding="utf-8") as f:
        points = [line.split()[1] for line in f if len(line.split()) > 1]
    return [p for p in points if p == root or p.startswith(root + "/")]


def netns_of(tag: str) -> list[str]:
    return [line.split()[0] for line in _run("ip", "netns", "list").splitlines()
            if line.startswith(f"shoal-{tag}-")]


def cgroups_of(tag: str) -> list[Path]:
    return [p for p in Path("/sys/fs/cgroup").glob(f"*/shoal-{tag}") if p.is_dir()]

"""`Lab`: a `shoal lab` for integration tests, made and removed by the same code as the CLI.

    with Lab(nodes=3, dispatcher_heartbeat="1s") as lab:
        lab.api("node1", "GET", "/v1.50/nodes").json()
        lab.exec("node1", "hostname").stdout        # "node1\\n"
        lab.link("node2", up=False); lab.stop("node3", kill=True); lab.start("node3")

The lab gets a unique name (`t` + 6 random [a-z0-9]) so parallel workers never collide, and is
removed on exit even when the test (or `up` itself) failed. `require_lab_host()` skips a test
on a machine that cannot run a lab (not root, no crun, no shoald, no busybox image).
"""

from __future__ import annotations

import os
import secrets
import shutil
import string
import subprocess
from pathlib import Path
from types import TracebackType
from typing import Any

import httpx
import pytest

from shoal.api.units import parse_duration_ns
from shoal.lab import down as lab_down
from shoal.lab import names, ops, swarm
from shoal.lab import state as lab_state
from shoal.lab import up as lab_up
from shoal.lab.state import LabState
from tests.daemon import BUSYBOX_TAR, SHOALD, wait_for

IMAGES_DIR = BUSYBOX_TAR.parent


def require_lab_host() -> None:
    if os.geteuid() != 0:
        pytest.skip("lab tests need root")
    for tool in ("crun", "nsenter", "unshare", "ip"):
        if shutil.which(tool) is None:
            pytest.skip(f"lab tests need {tool}")
    if not SHOALD.exists():
        pytest.skip(f"{SHOALD} missing: install the package (make venv)")
    if not BUSYBOX_TAR.is_file():
        pytest.skip(f"{BUSYBOX_TAR} missing: run `make images`")


def unique_name() -> str:
    alphabet = string.ascii_lowercase + string.digits
    return "t" + "".join(secrets.choice(alphabet) for _ in range(6))


class Lab:
    def __init__(self, nodes: int = 3, *, name: str | None = None, dispatcher_heartbeat: str = "1s",
                 join: bool = True) -> None:
        self.nodes = nodes
        self.name = name or unique_name()
        self.heartbeat_ns = parse_duration_ns(dispatcher_heartbeat) if dispatcher_heartbeat else 0
        self.join = join
        self._clients: dict[str, httpx.Client] = {}

    # ---------------------------------------------------------------------------- lifecycle
    def __enter__(self) -> Lab:
        try:
            lab_up.up(self.name, self.nodes, sorted(IMAGES_DIR.glob("*.tar")),
                      dispatcher_heartbeat_ns=self.heartbeat_ns, join=self.join)
        except BaseException as e:
            logs = self.logs_tail()
            self.down()
            if isinstance(e, Exception):
                raise AssertionError(f"lab up failed: {e}\n{logs}") from e
            raise
        return self

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        self.down()

    def down(self) -> None:
        self._close_clients()
        with lab_state.locked():
            lab_down.down(self.name)

    @property
    def state(self) -> LabState:
        return lab_state.require(self.name)

    @property
    def hosts(self) -> list[str]:
        return [h.name for h in self.state.hosts]

    def address(self, host: str) -> str:
        return self.state.host(host).address

    def socket(self, host: str) -> Path:
        return names.socket_path(self.name, host)

    def data_root(self, host: str) -> Path:
        return names.data_root(self.name, host)

    def logs_tail(self, lines: int = 20) -> str:
        """The last lines of every host's shoald.out, for failure messages."""
        out = []
        for path in sorted(names.data_dir(self.name).glob("node*/shoald.out")):
            text = path.read_text(errors="replace").splitlines()[-lines:]
            out.append(f"--- {path}\n" + "\n".join(text))
        return "\n".join(out)

    # ---------------------------------------------------------------------------- API
    def client(self, host: str) -> httpx.Client:
        if host not in self._clients:
            transport = httpx.HTTPTransport(uds=str(self.socket(host)))
            self._clients[host] = httpx.Client(transport=transport, base_url="http://shoal", timeout=30.0)
        return self._clients[host]

    def _close_clients(self) -> None:
        for c in self._clients.values():
            c.close()
        self._clients.clear()

    def api(self, host: str, method: str, path: str, json: Any = None, **kwargs: Any) -> httpx.Response:
        return self.client(host).request(method, path, json=json, **kwargs)

    def pings(self, host: str) -> bool:
        try:
            return self.api(host, "GET", "/_ping", timeout=2.0).status_code == 200
        except httpx.HTTPError:
            return False

    def ready_nodes(self, manager: str = "node1") -> list[str]:
        """Hostnames of the nodes the manager reports Ready."""
        nodes = self.api(manager, "GET", "/v1.50/nodes").json()
        return sorted(n["Description"]["Hostname"] for n in nodes if n["Status"]["State"] == "ready")

    def wait_ready(self, hosts: list[str] | None = None, timeout: float = 30.0) -> None:
        want = sorted(hosts or self.hosts)
        wait_for(lambda: self.ready_nodes() == want, timeout, f"nodes {want} Ready on node1")

    # ---------------------------------------------------------------------------- host control
    def exec(self, host: str, *cmd: str, timeout: float = 30.0) -> subprocess.CompletedProcess[str]:
        """Run cmd in the host's namespaces (as `shoal lab exec`); never raises on exit status."""
        argv, env = ops.exec_argv(self.name, host, list(cmd))
        return subprocess.run(argv, env=env, capture_output=True, text=True, timeout=timeout, check=False)

    def stop(self, host: str, kill: bool = False) -> None:
        self.client(host).close()
        self._clients.pop(host, None)
        ops.stop(self.name, host, kill=kill)

    def start(self, host: str) -> None:
        ops.start(self.name, host)

    def link(self, host: str, up: bool) -> None:
        ops.link(self.name, host, up)

    def join_workers(self) -> None:
        swarm.join_workers(self.state)

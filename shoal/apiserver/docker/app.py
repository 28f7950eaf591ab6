"""The Docker Engine API application and its listeners; built and started by shoal.daemon.

`make_app(context)` assembles the routes of every concern module; `ApiServer` serves it on unix
sockets and loopback TCP only (the loopback-only policy: a non-loopback TCP address is refused).
"""

from __future__ import annotations

import contextlib
import ipaddress
import logging
import os
from pathlib import Path

from aiohttp import web

from shoal.apiserver.docker import images, logs, networks, nodes, services, swarm, system, tasks
from shoal.apiserver.docker.context import CONTEXT_KEY, ApiContext
from shoal.apiserver.http import add_docker_headers, error_middleware

log = logging.getLogger(__name__)

# Image archives can be large; the default 1 MiB limit would refuse `docker load`.
_MAX_BODY_BYTES = 64 * 1024 * 1024 * 1024


def make_app(context: ApiContext) -> web.Application:
    app = web.Application(middlewares=[error_middleware], client_max_size=_MAX_BODY_BYTES)
    app[CONTEXT_KEY] = context
    app.on_response_prepare.append(add_docker_headers)
    for module in (system, swarm, services, tasks, nodes, logs, images, networks):
        module.register(app)
    return app


def parse_host(host: str) -> tuple[str, str | int]:
    """`unix:///path` -> ("unix", path); `tcp://127.0.0.1:PORT` -> ("tcp", port). Refuses the rest."""
    if host.startswith("unix://"):
        path = host[len("unix://"):]
        if not path.startswith("/"):
            raise ValueError(f"unix socket path must be absolute: {host}")
        return "unix", path
    if host.startswith("tcp://"):
        addr, _, port = host[len("tcp://"):].rpartition(":")
        addr = addr.strip("[]")
        try:
            loopback = addr == "localhost" or ipaddress.ip_address(addr).is_loopback
        except ValueError:
            loopback = False
        if not loopback:
            raise ValueError(f"refusing to listen on {host}: only loopback TCP addresses are allowed")
        if not port.isdigit():
            raise ValueError(f"invalid port in {host}")
        return "tcp:" + addr, int(port)
    raise ValueError(f"unsupported host {host!r}: use unix:///path or tcp://127.0.0.1:PORT")


class ApiServer:
    """The aiohttp runner and its sites; `start()` binds them all, `stop()` closes them."""

    def __init__(self, app: web.Application, hosts: list[str]) -> None:
        self._hosts = [parse_host(h) for h in hosts]
        # handler_cancellation: a client that disconnects ends its handler (log follow streams).
        self._runner = web.AppRunner(app, handler_cancellation=True, access_log=None)

    async def start(self) -> None:
        await self._runner.setup()
        for kind, where in self._hosts:
            if kind == "unix":
                path = Path(str(where))
                path.parent.mkdir(parents=True, exist_ok=True)
                if path.is_socket():
                    path.unlink()  # left by a daemon that was killed
                site: web.BaseSite = web.UnixSite(self._runner, str(path))
                await site.start()
                os.chmod(path, 0o660)
            else:
                site = web.TCPSite(self._runner, kind.split(":", 1)[1], int(where))
                await site.start()
            log.info("API listening on %s", site.name)

    async def stop(self) -> None:
        await self._runner.cleanup()
        for kind, where in self._hosts:
            if kind == "unix":
                with contextlib.suppress(FileNotFoundError):
                    Path(str(where)).unlink()  # a clean stop leaves no socket behind

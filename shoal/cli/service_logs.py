"""`shoal service logs SERVICE`: stream a service's logs, rendered like docker's.

Registered on the `service` group by `shoal.cli.service`. The body is stdcopy frames
(8-byte header: stream, 0, 0, 0, big-endian length) unless the daemon says raw-stream. Each line
is `[timestamp ]details message`; the details attrs name the node, service and task, which are
looked up (once each) to print `web.1.<task12>@<hostname>    | message`.
"""

from __future__ import annotations

import struct
import sys
from collections.abc import Iterable, Iterator
from typing import Any
from urllib.parse import unquote_plus

import click

from shoal.cli.client import App, Client, CliError, DaemonError
from shoal.cli.service_ps import node_name

MULTIPLEXED = "application/vnd.docker.multiplexed-stream"


def frames(chunks: Iterable[bytes]) -> Iterator[tuple[int, bytes]]:
    """stdcopy demultiplexing: (stream, payload) per frame, across arbitrary chunk boundaries."""
    buffer = b""
    for chunk in chunks:
        buffer += chunk
        while len(buffer) >= 8:
            stream, length = buffer[0], struct.unpack(">I", buffer[4:8])[0]
            if len(buffer) < 8 + length:
                break
            yield stream, buffer[8:8 + length]
            buffer = buffer[8 + length:]


def parse_details(text: str) -> dict[str, str]:
    """`k=v,k2=v2` with url.QueryEscape'd parts."""
    out: dict[str, str] = {}
    for part in text.split(","):
        key, _, value = part.partition("=")
        out[unquote_plus(key)] = unquote_plus(value)
    return out


class Prefixer:
    """Turns the details of a line into `web.1.<task12>@<host>`, caching the lookups."""

    def __init__(self, client: Client, task_ids: bool) -> None:
        self.client = client
        self.task_ids = task_ids
        self.cache: dict[str, Any] = {}

    def _get(self, path: str) -> Any:
        if path not in self.cache:
            try:
                self.cache[path] = self.client.get(path)
            except DaemonError:
                self.cache[path] = {}
        return self.cache[path]

    def prefix(self, details: dict[str, str]) -> str:
        node_id = details.get("com.docker.swarm.node.id")
        task_id = details.get("com.docker.swarm.task.id")
        service_id = details.get("com.docker.swarm.service.id")
        if not node_id:
            raise CliError("Error: missing node id in details")
        if not task_id or not service_id:
            raise CliError("Error: missing task or service id in details")
        task = self._get(f"/tasks/{task_id}")
        service = self._get(f"/services/{service_id}")
        node = self._get(f"/nodes/{node_id}")
        name = (service.get("Spec") or {}).get("Name") or service_id
        slot = task.get("Slot") or node_id
        task_name = f"{name}.{slot}" + (f".{task_id[:12]}" if self.task_ids else "")
        return f"{task_name}@{node_name(node) if node else node_id}"


def render_line(line: str, timestamps: bool, prefixer: Prefixer | None) -> str:
    """One log line: `[ts ]prefix    | message` (raw: the line as sent)."""
    if prefixer is None:
        return line
    ts = ""
    if timestamps:
        ts, _, line = line.partition(" ")
        ts += " "
    details, _, message = line.partition(" ")
    return f"{ts}{prefixer.prefix(parse_details(details))}    | {message}"


def _emit(stream: int, payload: bytes, timestamps: bool, prefixer: Prefixer | None) -> None:
    text = payload.decode("utf-8", "replace")
    if stream == 3:
        raise CliError(text.rstrip("\n"))
    for line in text.splitlines():
        out = sys.stderr if stream == 2 else sys.stdout
        out.write(render_line(line, timestamps, prefixer) + "\n")
        out.flush()


@click.command("logs")
@click.option("-f", "--follow", is_flag=True, help="Follow log output")
@click.option("-n", "--tail", default="all", help='Number of lines to show from the end of the logs')
@click.option("-t", "--timestamps", is_flag=True, help="Show timestamps")
@click.option("--since", help="Show logs since timestamp or relative (e.g. 42m)")
@click.option("--raw", is_flag=True, help="Do not neatly format logs")
@click.option("--no-task-ids", is_flag=True, help="Do not include task IDs in output")
@click.argument("name")
@click.pass_obj
def logs(app: App, follow: bool, tail: str, timestamps: bool, since: str | None, raw: bool,
         no_task_ids: bool, name: str) -> None:
    """Fetch the logs of a service."""
    if tail != "all" and not tail.isdigit():
        raise CliError(f'invalid argument "{tail}" for "-n, --tail" flag: must be a number or "all"')
    params: dict[str, str | int] = {"stdout": 1, "stderr": 1, "tail": tail}
    if not raw:
        params["details"] = 1
    if follow:
        params["follow"] = 1
    if timestamps:
        params["timestamps"] = 1
    if since:
        params["since"] = since
    prefixer = None if raw else Prefixer(app.client, not no_task_ids)
    with app.client.stream("GET", f"/services/{name}/logs", params) as response:
        if response.headers.get("content-type", "").startswith(MULTIPLEXED):
            for stream, payload in frames(response.iter_bytes()):
                _emit(stream, payload, timestamps, prefixer)
        else:
            for line in response.iter_lines():
                _emit(1, line.encode(), timestamps, prefixer)

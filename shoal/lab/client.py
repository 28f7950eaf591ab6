"""The lab's HTTP client of one host's Docker Engine API (httpx over the host's unix socket)."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import httpx

from shoal.lab.names import LabError

API = "/v1.50"


class HostClient:
    """Requests to one shoald; errors become LabError naming the host."""

    def __init__(self, host: str, socket: Path, timeout: float = 30.0) -> None:
        self.host = host
        self.socket = socket
        self._client = httpx.Client(transport=httpx.HTTPTransport(uds=str(socket)),
                                    base_url="http://shoal", timeout=timeout)

    def __enter__(self) -> HostClient:
        return self

    def __exit__(self, *exc: object) -> None:
        self._client.close()

    def request(self, method: str, path: str, json: Any = None) -> httpx.Response:
        return self._client.request(method, API + path, json=json)

    def call(self, method: str, path: str, json: Any = None) -> Any:
        """The decoded JSON answer (None when empty); LabError on an error status."""
        try:
            resp = self.request(method, path, json)
        except httpx.HTTPError as e:
            raise LabError(f"{self.host}: {method} {path}: {e}") from e
        if resp.status_code >= 400:
            try:
                message = resp.json().get("message", resp.text)
            except ValueError:
                message = resp.text
            raise LabError(f"{self.host}: {method} {path}: {message}")
        return resp.json() if resp.content else None

    def pings(self) -> bool:
        try:
            return self._client.get("/_ping", timeout=2.0).status_code == 200
        except httpx.HTTPError:
            return False


def wait_ping(client: HostClient, timeout: float, alive: Any = None) -> None:
    """Wait until the host answers /_ping; `alive()` returning False aborts (its daemon died)."""
    deadline = time.monotonic() + timeout
    while not client.pings():
        if alive is not None and not alive():
            raise LabError(f"{client.host}: shoald exited during start")
        if time.monotonic() > deadline:
            raise LabError(f"{client.host}: shoald did not answer /_ping within {timeout:.0f}s")
        time.sleep(0.05)

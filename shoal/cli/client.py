"""HTTP client of the daemon's Docker Engine API, and the CLI's error types.

Every command module gets a `Client` from `App.client` (built lazily, so flag validation runs
before any connection is made). The client resolves the host (-H, then SHOAL_HOST, then
DOCKER_HOST, then the default unix socket), negotiates the API version with `HEAD /_ping` on its
first request as the docker CLI does, and turns error responses into `DaemonError`.
`shoal.cli.main` prints `DaemonError` and `CliError` and exits 1.
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

import httpx

DEFAULT_HOST = "unix:///run/shoal/shoal.sock"
MAX_API_VERSION = "1.50"
# Docker's fallbackAPIVersion: a server that sends no Api-Version header is treated as 1.24.
FALLBACK_API_VERSION = "1.24"
USER_AGENT = "Shoal-Client/0.1.0 (linux)"

Params = dict[str, str | int]


class CliError(Exception):
    """A failure to report: the message goes to stderr verbatim and the process exits `exit_code`."""

    def __init__(self, message: str, exit_code: int = 1) -> None:
        super().__init__(message)
        self.message = message
        self.exit_code = exit_code


class DaemonError(CliError):
    """The daemon answered with an error status; printed as docker does."""

    def __init__(self, status: int, message: str) -> None:
        super().__init__(f"Error response from daemon: {message}")
        self.status = status
        self.daemon_message = message


def resolve_host(flag: str | None) -> str:
    """-H wins, then SHOAL_HOST, then DOCKER_HOST, then the default socket."""
    for candidate in (flag, os.environ.get("SHOAL_HOST"), os.environ.get("DOCKER_HOST")):
        if candidate:
            return candidate
    return DEFAULT_HOST


def _version_tuple(text: str) -> tuple[int, ...]:
    try:
        return tuple(int(p) for p in text.split("."))
    except ValueError:
        return (0,)


def negotiate_version(header: str | None) -> str:
    """min(our maximum, the server's Api-Version); the fallback when the header is missing."""
    if not header:
        return FALLBACK_API_VERSION
    if _version_tuple(header) < _version_tuple(MAX_API_VERSION):
        return header
    return MAX_API_VERSION


def _transport_for(host: str) -> tuple[httpx.BaseTransport, str]:
    """The transport and base URL of a host string (unix:///path, tcp://h:p, http://h:p, /path)."""
    if host.startswith("unix://") or host.startswith("/"):
        path = host[len("unix://"):] if host.startswith("unix://") else host
        return httpx.HTTPTransport(uds=path), "http://localhost"
    if host.startswith("tcp://"):
        return httpx.HTTPTransport(), "http://" + host[len("tcp://"):]
    if host.startswith("http://"):
        return httpx.HTTPTransport(), host
    raise CliError(f"unable to parse docker host `{host}`")


def error_message(response: httpx.Response) -> str:
    """Docker's checkResponseErr: the JSON `message` only with exactly application/json."""
    body = response.read()
    if response.headers.get("content-type") == "application/json":
        try:
            message = json.loads(body).get("message")
        except (ValueError, AttributeError):
            message = None
        if isinstance(message, str):
            return message
    text = body.decode("utf-8", "replace").strip()
    return text or f"{response.status_code} {response.reason_phrase}"


class Client:
    """A synchronous Engine API client bound to one host."""

    def __init__(self, host: str, transport: httpx.BaseTransport | None = None) -> None:
        self.host = host
        real_transport, base_url = _transport_for(host)
        self._http = httpx.Client(
            transport=transport or real_transport, base_url=base_url,
            headers={"User-Agent": USER_AGENT}, timeout=httpx.Timeout(60.0, connect=5.0),
        )
        self._version: str | None = None
        self.server_api_version: str | None = None

    def close(self) -> None:
        self._http.close()

    def _connect_error(self) -> CliError:
        return CliError(f"Cannot connect to the Shoal daemon at {self.host}: is shoald running?")

    @property
    def api_version(self) -> str:
        """The negotiated version; pings the daemon the first time."""
        if self._version is None:
            try:
                response = self._http.head("/_ping")
                if response.status_code not in (200, 500):
                    response = self._http.get("/_ping")
            except httpx.TransportError:
                raise self._connect_error() from None
            self.server_api_version = response.headers.get("api-version")
            self._version = negotiate_version(self.server_api_version)
        return self._version

    def _url(self, path: str, versioned: bool) -> str:
        return f"/v{self.api_version}{path}" if versioned else path

    @contextmanager
    def stream(
        self, method: str, path: str, params: Params | None = None, body: Any = None,
        content: bytes | Iterable[bytes] | None = None, headers: dict[str, str] | None = None,
        versioned: bool = True,
    ) -> Iterator[httpx.Response]:
        """Send a request and yield the open response (for logs and image loads); errors raise."""
        url = self._url(path, versioned)
        data = json.dumps(body).encode() if body is not None else content
        all_headers = dict(headers or {})
        if body is not None:
            all_headers["Content-Type"] = "application/json"
        request = self._http.build_request(method, url, params=params, content=data, headers=all_headers,
                                           timeout=None)
        try:
            response = self._http.send(request, stream=True)
        except httpx.TransportError:
            raise self._connect_error() from None
        try:
            if response.status_code >= 400:
                raise DaemonError(response.status_code, error_message(response))
            yield response
        finally:
            response.close()

    def request(self, method: str, path: str, params: Params | None = None, body: Any = None,
                content: bytes | Iterable[bytes] | None = None, headers: dict[str, str] | None = None,
                versioned: bool = True) -> Any:
        """Send a request; return the decoded JSON body (None when empty or not JSON)."""
        with self.stream(method, path, params, body, content, headers, versioned) as response:
            raw = response.read()
        if not raw.strip():
            return None
        try:
            return json.loads(raw)
        except ValueError:
            return raw.decode("utf-8", "replace")

    def get(self, path: str, params: Params | None = None) -> Any:
        return self.request("GET", path, params)

    def post(self, path: str, params: Params | None = None, body: Any = None) -> Any:
        return self.request("POST", path, params, body)

    def delete(self, path: str, params: Params | None = None) -> Any:
        return self.request("DELETE", path, params)


def parse_filter_flags(flags: Iterable[str]) -> dict[str, list[str]]:
    """`--filter k=v` flags, grouped by key."""
    grouped: dict[str, list[str]] = {}
    for flag in flags:
        key, sep, value = flag.partition("=")
        if not sep:
            raise CliError(f"Error: bad format of filter (expected name=value): {flag}")
        grouped.setdefault(key.strip().lower(), []).append(value)
    return grouped


def encode_filters(grouped: dict[str, list[str]]) -> str:
    return json.dumps({k: {v: True for v in vs} for k, vs in grouped.items()}, separators=(",", ":"))


@dataclass
class App:
    """The click context object: the host and, once needed, its client."""

    host: str | None = None
    transport: httpx.BaseTransport | None = None
    _client: Client | None = None

    @property
    def client(self) -> Client:
        if self._client is None:
            self._client = Client(resolve_host(self.host), self.transport)
        return self._client

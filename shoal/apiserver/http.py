"""HTTP plumbing shared by the API adapters: version negotiation, headers, errors, JSON.

Used by `shoal.apiserver.docker.app` (which builds the aiohttp application) and by every handler
module (json_response, read_json, query helpers). Docker's conventions (wire-protocols §1.1-1.2):
every path is served both unversioned and under `/v1.24`..`/v1.50`; every response carries
`Api-Version`, `Ostype` and `Server`; every error is `{"message": ...}` with a Content-Type of
exactly `application/json` (anything else makes the docker CLI print the raw body).
"""

from __future__ import annotations

import json
import logging
from collections.abc import Awaitable, Callable
from typing import Any, TypeVar

import msgspec
from aiohttp import web

from shoal.api import gojson
from shoal.api.errors import InvalidArgument, ShoalError

log = logging.getLogger(__name__)

API_VERSION = "1.50"
MIN_API_VERSION = "1.24"
# Docker's release we mimic, then Shoal's own version: semver-valid, shown by `node ls` as ENGINE VERSION.
ENGINE_VERSION = "28.2.2-shoal.0.1.0"
JSON = "application/json"

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]
T = TypeVar("T")


def _version_tuple(text: str) -> tuple[int, ...]:
    try:
        return tuple(int(p) for p in text.split("."))
    except ValueError:
        raise InvalidArgument(f"invalid API version {text!r}") from None


def request_api_version(request: web.Request) -> str:
    """The version the client asked for in the path, or ours when the path is unversioned."""
    return request.match_info.get("api_version") or API_VERSION


def api_version_at_least(request: web.Request, version: str) -> bool:
    return _version_tuple(request_api_version(request)) >= _version_tuple(version)


def error_response(status: int, message: str) -> web.Response:
    body = msgspec.json.encode({"message": message})
    return web.Response(status=status, body=body, headers={"Content-Type": JSON})


def json_response(obj: Any, status: int = 200) -> web.Response:
    """Encode with msgspec: the store's frozen structs encode directly with Docker's names."""
    return web.Response(status=status, body=msgspec.json.encode(obj), headers={"Content-Type": JSON})


def empty_response(status: int = 200) -> web.Response:
    return web.Response(status=status)


async def read_json(request: web.Request, type_: type[T]) -> T:
    """Decode the body into `type_`; a malformed or mistyped body is the client's mistake (400)."""
    body = await request.read()
    if not body.strip():
        raise InvalidArgument("request body is empty: a JSON object was expected")
    try:
        return gojson.decode(body, type_)
    except msgspec.ValidationError as e:
        raise InvalidArgument(f"invalid JSON body: {e}") from None
    except msgspec.DecodeError as e:
        raise InvalidArgument(f"invalid JSON: {e}") from None


def query_bool(request: web.Request, name: str) -> bool:
    """Docker's boolValue: absent, "", "0", "no", "false", "none" are false."""
    return request.query.get(name, "").strip().lower() not in ("", "0", "no", "false", "none")


def query_version(request: web.Request, noun: str = "service") -> int:
    """The `?version=N` every update requires (wire-protocols §1.8)."""
    try:
        return int(request.query.get("version", ""))
    except ValueError:
        raise InvalidArgument(f"invalid {noun} version") from None


def parse_filters(request: web.Request, accepted: set[str]) -> dict[str, list[str]]:
    """`filters=` in both dialects: Go's {"k":{"v":true}} and docker-py's legacy {"k":["v"]}."""
    raw = request.query.get("filters", "")
    if not raw:
        return {}
    try:
        data = json.loads(raw)
    except json.JSONDecodeError as e:
        raise InvalidArgument(f"invalid filter: {e}") from None
    if not isinstance(data, dict):
        raise InvalidArgument("invalid filter: a JSON object was expected")
    out: dict[str, list[str]] = {}
    for key, value in data.items():
        if key not in accepted:
            raise InvalidArgument(f"invalid filter '{key}'")
        if isinstance(value, dict):
            out[key] = [str(v) for v, on in value.items() if on]
        elif isinstance(value, list):
            out[key] = [str(v) for v in value]
        else:
            raise InvalidArgument(f"invalid filter '{key}': values must be an object or a list")
    return out


def labels_match(labels: dict[str, str] | None, wanted: list[str]) -> bool:
    """`label=k` means key present, `label=k=v` means equal; every wanted label must hold."""
    have = labels or {}
    for item in wanted:
        key, sep, value = item.partition("=")
        if key not in have or (sep and have[key] != value):
            return False
    return True


def _check_version(request: web.Request) -> None:
    asked = request.match_info.get("api_version")
    if not asked:
        return
    v = _version_tuple(asked)
    if v > _version_tuple(API_VERSION):
        raise InvalidArgument(
            f"client version {asked} is too new. Maximum supported API version is {API_VERSION}")
    if v < _version_tuple(MIN_API_VERSION):
        raise InvalidArgument(
            f"client version {asked} is too old. Minimum supported API version is {MIN_API_VERSION}, "
            "please upgrade your client to a newer version")


@web.middleware
async def error_middleware(request: web.Request, handler: Handler) -> web.StreamResponse:
    """Turn every failure into Docker's JSON error; never drop the connection on a bug."""
    try:
        _check_version(request)
        return await handler(request)
    except ShoalError as e:
        return error_response(e.status, e.message)
    except web.HTTPException as e:
        if e.status >= 400:
            text = "page not found" if e.status == 404 else (e.reason or str(e))
            return error_response(e.status, text)
        raise
    except (ConnectionResetError, ConnectionError):
        raise
    except Exception as e:
        log.exception("%s %s failed", request.method, request.path)
        return error_response(500, f"{type(e).__name__}: {e}" if not str(e) else str(e))


async def add_docker_headers(request: web.Request, response: web.StreamResponse) -> None:
    """on_response_prepare: moby's version middleware sets these on every response."""
    response.headers["Api-Version"] = API_VERSION
    response.headers["Ostype"] = "linux"
    response.headers["Docker-Experimental"] = "false"
    response.headers["Server"] = f"Docker/{ENGINE_VERSION} (linux)"


def add_route(app: web.Application, method: str, path: str, handler: Handler) -> None:
    """Serve `path` unversioned and under `/v<api version>` (checked by the middleware)."""
    app.router.add_route(method, path, handler)
    app.router.add_route(method, "/v{api_version:[0-9]+(?:\\.[0-9]+)*}" + path, handler)

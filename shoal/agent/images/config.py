"""Image configs: validating what archives carry, making one for `docker import` (with its
Dockerfile-style `--change` lines), and the views list/inspect/resolve hand out.

Called by the image store (agent/images/store.py) and the archive readers (agent/images/archive.py).
Configs are kept as the raw JSON an archive carried (their sha256 is the image ID); this module
only reads them.
"""

from __future__ import annotations

import datetime as dt
import json
import platform
import posixpath
import shlex
from collections.abc import Callable
from typing import Any

from shoal.agent.images.layout import digest_hex
from shoal.agent.images.model import ImageConfig
from shoal.api.errors import InvalidArgument

_ARCHES = {"x86_64": "amd64", "aarch64": "arm64", "armv7l": "arm", "ppc64le": "ppc64le", "s390x": "s390x"}
_Handler = Callable[[dict[str, Any], str], None]
_EPOCH_ZERO = "0001-01-01T00:00:00Z"  # Go's zero time, what Docker shows for an unknown date


def host_arch() -> str:
    """The OCI architecture name of this machine."""
    machine = platform.machine()
    return _ARCHES.get(machine, machine)


def parse_config(data: bytes, label: str) -> dict[str, Any]:
    """The decoded config; InvalidArgument unless it is an object with sha256 rootfs diff IDs."""
    try:
        config = json.loads(data)
    except (UnicodeDecodeError, ValueError) as e:
        raise InvalidArgument(f"{label}: image config is not valid JSON: {e}") from e
    if not isinstance(config, dict):
        raise InvalidArgument(f"{label}: image config is not a JSON object")
    rootfs = config.get("rootfs")
    if not isinstance(rootfs, dict) or rootfs.get("type") != "layers":
        raise InvalidArgument(f"{label}: image config has no rootfs of type 'layers'")
    ids = rootfs.get("diff_ids") or []
    if not isinstance(ids, list):
        raise InvalidArgument(f"{label}: image config rootfs.diff_ids is not a list")
    for diff_id in ids:
        digest_hex(diff_id, "diff ID")
    if not isinstance(config.get("config") or {}, dict):
        raise InvalidArgument(f"{label}: image config 'config' is not an object")
    return config


def diff_ids(config: dict[str, Any]) -> list[str]:
    return list(config["rootfs"].get("diff_ids") or [])


def _container_config(config: dict[str, Any]) -> dict[str, Any]:
    inner = config.get("config") or {}
    return inner if isinstance(inner, dict) else {}


def image_config(config: dict[str, Any]) -> ImageConfig:
    """What the executor needs to run the image."""
    inner = _container_config(config)
    return ImageConfig(
        entrypoint=_str_list(inner.get("Entrypoint")),
        cmd=_str_list(inner.get("Cmd")),
        env=_str_list(inner.get("Env")),
        working_dir=str(inner.get("WorkingDir") or ""),
        user=str(inner.get("User") or ""),
        labels=_labels(inner.get("Labels")),
    )


def _str_list(value: object) -> list[str] | None:
    return [str(v) for v in value] if isinstance(value, list) else None


def _labels(value: object) -> dict[str, str] | None:
    return {str(k): str(v) for k, v in value.items()} if isinstance(value, dict) and value else None


def created(config: dict[str, Any]) -> str:
    value = config.get("created")
    return value if isinstance(value, str) and value else _EPOCH_ZERO


def created_seconds(config: dict[str, Any]) -> int:
    """Unix seconds of `created` (0 when absent or unreadable)."""
    try:
        return max(0, int(dt.datetime.fromisoformat(created(config)).timestamp()))
    except ValueError:
        return 0


def inspect_view(image_id: str, tags: list[str], config: dict[str, Any], size: int) -> dict[str, object]:
    """Docker's ImageInspect for one image."""
    inner = dict(_container_config(config))
    for key in ("Cmd", "Entrypoint", "Env", "Labels"):
        inner.setdefault(key, None)
    for key in ("WorkingDir", "User"):
        inner.setdefault(key, "")
    view: dict[str, object] = {
        "Id": image_id, "RepoTags": tags, "RepoDigests": [], "Parent": "",
        "Comment": str(config.get("comment") or ""), "Created": created(config),
        "DockerVersion": str(config.get("docker_version") or ""), "Author": str(config.get("author") or ""),
        "Config": inner, "Architecture": str(config.get("architecture") or ""),
        "Os": str(config.get("os") or ""), "Size": size,
        "GraphDriver": {"Name": "overlay2", "Data": None},
        "RootFS": {"Type": "layers", "Layers": diff_ids(config)},
        "Metadata": {"LastTagTime": _EPOCH_ZERO},
    }
    if config.get("variant"):
        view["Variant"] = str(config["variant"])
    return view


def import_config(diff_id: str, changes: list[str], now: dt.datetime) -> bytes:
    """The config `docker import` writes for a one-layer image, `changes` applied."""
    stamp = now.astimezone(dt.UTC).isoformat().replace("+00:00", "Z")
    config = {
        "architecture": host_arch(), "os": "linux", "created": stamp,
        "config": apply_changes(changes),
        "rootfs": {"type": "layers", "diff_ids": [diff_id]},
        "history": [{"created": stamp, "comment": "Imported from -"}],
    }
    return json.dumps(config, separators=(",", ":")).encode()


def apply_changes(changes: list[str]) -> dict[str, Any]:
    """Docker's `--change` instructions as a container config (CMD, ENTRYPOINT, ENV, WORKDIR,
    USER, LABEL, EXPOSE, STOPSIGNAL); InvalidArgument names an unknown or malformed one."""
    inner: dict[str, Any] = {}
    for change in changes:
        keyword, _, rest = change.strip().partition(" ")
        keyword, rest = keyword.upper(), rest.strip()
        handler = _HANDLERS.get(keyword)
        if handler is None:
            raise InvalidArgument(f"{keyword or change!r} is not a valid change command")
        if not rest:
            raise InvalidArgument(f"{keyword} requires at least one argument")
        handler(inner, rest)
    return inner


def _command(rest: str) -> list[str]:
    """JSON (exec) form when it parses as a list of strings, otherwise shell form, as Docker does."""
    if rest.startswith("["):
        try:
            value = json.loads(rest)
        except ValueError:
            value = None
        if isinstance(value, list) and all(isinstance(v, str) for v in value):
            return value
    return ["/bin/sh", "-c", rest]


def _pairs(keyword: str, rest: str) -> list[tuple[str, str]]:
    """`K=V K2="v 2"` pairs, or the legacy `K value with spaces` form."""
    try:
        words = shlex.split(rest)
    except ValueError as e:
        raise InvalidArgument(f"{keyword} {rest!r}: {e}") from e
    if "=" not in words[0]:
        key, _, value = rest.partition(" ")
        if not value.strip():
            raise InvalidArgument(f"{keyword} names must be followed by a value: {rest!r}")
        return [(key, value.strip())]
    pairs = [word.partition("=") for word in words]
    if any(not key or not eq for key, eq, _ in pairs):
        raise InvalidArgument(f"{keyword} {rest!r}: want KEY=VALUE")
    return [(key, value) for key, _, value in pairs]


def _set_env(inner: dict[str, Any], rest: str) -> None:
    env: list[str] = list(inner.get("Env") or [])
    for key, value in _pairs("ENV", rest):
        env = [e for e in env if e.partition("=")[0] != key] + [f"{key}={value}"]
    inner["Env"] = env


def _set_labels(inner: dict[str, Any], rest: str) -> None:
    inner["Labels"] = {**(inner.get("Labels") or {}), **dict(_pairs("LABEL", rest))}


def _set_workdir(inner: dict[str, Any], rest: str) -> None:
    # A relative WORKDIR continues from the previous one, as in a Dockerfile.
    inner["WorkingDir"] = posixpath.normpath(posixpath.join(inner.get("WorkingDir") or "/", rest))


def _set_exposed(inner: dict[str, Any], rest: str) -> None:
    ports = inner.setdefault("ExposedPorts", {})
    for port in rest.split():
        ports[port if "/" in port else f"{port}/tcp"] = {}


def _setter(key: str, convert: Callable[[str], object] = str) -> _Handler:
    def handler(inner: dict[str, Any], rest: str) -> None:
        inner[key] = convert(rest)
    return handler


_HANDLERS: dict[str, _Handler] = {
    "CMD": _setter("Cmd", _command),
    "ENTRYPOINT": _setter("Entrypoint", _command),
    "ENV": _set_env,
    "LABEL": _set_labels,
    "WORKDIR": _set_workdir,
    "EXPOSE": _set_exposed,
    "USER": _setter("User"),
    "STOPSIGNAL": _setter("StopSignal"),
}

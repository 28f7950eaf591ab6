"""Image reference parsing and normalisation, the way Docker reads `busybox`, `busybox:latest`
and `docker.io/library/busybox:latest` as one name.

Called by the image store (agent/images/store.py) for every tag it stores or looks up, and by
the archive readers for the names an archive carries. Names are kept in Docker's *familiar*
form ("busybox:latest", "foo/bar:1", "localhost:5000/x:latest"), which is what `RepoTags` shows.
"""

from __future__ import annotations

import re

from shoal.api.errors import InvalidArgument

DEFAULT_DOMAIN = "docker.io"
_LEGACY_DOMAIN = "index.docker.io"
_OFFICIAL_PREFIX = "library/"

# distribution/reference's grammar: path components are lowercase alphanumerics joined by
# separators; a domain is hostname[:port]; a tag is up to 128 word characters, dots and dashes.
_COMPONENT = re.compile(r"[a-z0-9]+(?:(?:[._]|__|-+)[a-z0-9]+)*")
_DOMAIN = re.compile(
    r"(?:[a-zA-Z0-9](?:[a-zA-Z0-9-]*[a-zA-Z0-9])?)(?:\.(?:[a-zA-Z0-9](?:[a-zA-Z0-9-]*[a-zA-Z0-9])?))*"
    r"(?::[0-9]+)?"
)
_TAG = re.compile(r"[\w][\w.-]{0,127}")
_HEX = re.compile(r"[a-f0-9]+")
_FULL_ID = re.compile(r"(?:sha256:)?([a-f0-9]{64})")


def _invalid(ref: str, why: str = "") -> InvalidArgument:
    suffix = f": {why}" if why else ""
    return InvalidArgument(f"invalid reference format{suffix}: {ref!r}")


def _split_domain(name: str) -> tuple[str, str]:
    """("docker.io", "library/busybox") for "busybox"; the first component is a domain only when
    it looks like one (has a dot or a port, or is localhost), as Docker decides."""
    first, sep, rest = name.partition("/")
    if sep and ("." in first or ":" in first or first == "localhost"):
        domain, remainder = first, rest
    else:
        domain, remainder = DEFAULT_DOMAIN, name
    if domain == _LEGACY_DOMAIN:
        domain = DEFAULT_DOMAIN
    if domain == DEFAULT_DOMAIN and "/" not in remainder:
        remainder = _OFFICIAL_PREFIX + remainder
    return domain, remainder


def normalize(ref: str) -> str:
    """The familiar "name:tag" for a tagged or untagged name reference; InvalidArgument if `ref`
    is not one (digest references are refused: this store keeps no manifests to match them)."""
    if not ref or ref != ref.strip():
        raise _invalid(ref)
    if "@" in ref:
        raise _invalid(ref, "digest references are not supported")
    name, tag = ref, "latest"
    slash = ref.rfind("/")
    colon = ref.rfind(":")
    if colon > slash:
        name, tag = ref[:colon], ref[colon + 1:]
        if not _TAG.fullmatch(tag):
            raise _invalid(ref, "bad tag")
    domain, path = _split_domain(name)
    if not _DOMAIN.fullmatch(domain):
        raise _invalid(ref, "bad domain")
    if any(c.isupper() for c in path):
        raise _invalid(ref, "repository name must be lowercase")
    if not all(_COMPONENT.fullmatch(part) for part in path.split("/")):
        raise _invalid(ref)
    if len(domain) + 1 + len(path) > 255:
        raise _invalid(ref, "repository name must not be more than 255 characters")
    return f"{familiar_name(domain, path)}:{tag}"


def familiar_name(domain: str, path: str) -> str:
    """Docker's short display form: docker.io and library/ are left out."""
    if domain != DEFAULT_DOMAIN:
        return f"{domain}/{path}"
    if path.startswith(_OFFICIAL_PREFIX) and "/" not in path[len(_OFFICIAL_PREFIX):]:
        return path[len(_OFFICIAL_PREFIX):]
    return path


def try_normalize(ref: str) -> str | None:
    """`normalize`, or None when `ref` is no valid name (it may still be an image ID prefix)."""
    try:
        return normalize(ref)
    except InvalidArgument:
        return None


def id_prefix(ref: str) -> str | None:
    """The hex an image ID reference starts with ("sha256:abc" or "abc"), or None if `ref` cannot
    be one. Docker accepts any non-empty prefix and refuses only ambiguous ones."""
    hex_part = ref[len("sha256:"):] if ref.startswith("sha256:") else ref
    if not hex_part or len(hex_part) > 64 or not _HEX.fullmatch(hex_part):
        return None
    return hex_part


def is_full_id(ref: str) -> bool:
    return _FULL_ID.fullmatch(ref) is not None

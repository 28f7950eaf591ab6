"""Decoding JSON the way Go's encoding/json does: object keys match struct fields case-insensitively.

The Docker clients rely on this: docker-py sends `Mode: {"replicated": {...}}` where the Go type
says `Replicated`. Called by the API server on every request body before msgspec's typed decode.
"""

from __future__ import annotations

import functools
from typing import Any, TypeVar

import msgspec
from msgspec import inspect as mi

T = TypeVar("T")


def decode(body: bytes, type_: type[T]) -> T:
    """Decode `body` into `type_`, renaming keys that differ from a field only in case."""
    raw = msgspec.json.decode(body)
    return msgspec.convert(_normalise(raw, mi.type_info(type_)), type_)


@functools.cache
def _field_map(struct: type[Any]) -> tuple[dict[str, str], dict[str, mi.Type]]:
    info = mi.type_info(struct)
    assert isinstance(info, mi.StructType)
    names = {f.encode_name.lower(): f.encode_name for f in info.fields}
    types = {f.encode_name: f.type for f in info.fields}
    return names, types


def _normalise(value: Any, t: mi.Type) -> Any:
    if isinstance(t, mi.UnionType):
        for member in t.types:
            if isinstance(member, mi.StructType | mi.DictType | mi.ListType) and value is not None:
                return _normalise(value, member)
        return value
    if isinstance(t, mi.StructType) and isinstance(value, dict):
        names, types = _field_map(t.cls)
        out: dict[str, Any] = {}
        for key, item in value.items():
            canonical = names.get(key.lower(), key) if isinstance(key, str) else key
            if canonical in out and canonical != key:
                continue  # an exact-case key wins over a differently-cased duplicate, as in Go
            out[canonical] = _normalise(item, types[canonical]) if canonical in types else item
        return out
    if isinstance(t, mi.ListType) and isinstance(value, list):
        return [_normalise(v, t.item_type) for v in value]
    if isinstance(t, mi.DictType) and isinstance(value, dict):
        return {k: _normalise(v, t.value_type) for k, v in value.items()}
    return value

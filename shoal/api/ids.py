"""Object identifiers: 25-character lowercase base36, as swarmkit's identity.NewID makes them."""

from __future__ import annotations

import secrets

_ALPHABET = "0123456789abcdefghijklmnopqrstuvwxyz"
ID_LENGTH = 25


def new_id() -> str:
    """A fresh random ID (128 bits of entropy, base36, left-padded to 25 characters)."""
    n = secrets.randbits(128)
    out = []
    while n:
        n, r = divmod(n, 36)
        out.append(_ALPHABET[r])
    return "".join(reversed(out)).rjust(ID_LENGTH, "0")


def is_id(value: str) -> bool:
    return len(value) == ID_LENGTH and all(c in _ALPHABET for c in value)

"""Parsing of the units users type: durations ("1m30s"), sizes ("64M", "1g"), CPUs ("0.5").

Shared by the CLI, the API and (later) compose; every parser raises ValueError with a message
that names the bad value.
"""

from __future__ import annotations

import re

_DURATION_UNITS = {"ns": 1, "us": 1_000, "µs": 1_000, "ms": 1_000_000, "s": 1_000_000_000,
                   "m": 60_000_000_000, "h": 3_600_000_000_000}
_DURATION_PART = re.compile(r"(\d+(?:\.\d*)?|\.\d+)(ns|us|µs|ms|s|m|h)")
_SIZE = re.compile(r"^(\d+(?:\.\d+)?)\s*([kmgtp]?)(i?b?)?$", re.IGNORECASE)
_SIZE_FACTORS = {"": 1, "k": 1 << 10, "m": 1 << 20, "g": 1 << 30, "t": 1 << 40, "p": 1 << 50}


def parse_duration_ns(text: str) -> int:
    """Go's time.ParseDuration: "10s", "1m30s", "1.5h", "0" -> nanoseconds. Negative is refused."""
    s = text.strip()
    if s == "0":
        return 0
    pos, total = 0, 0.0
    if not s:
        raise ValueError(f'invalid duration "{text}"')
    while pos < len(s):
        m = _DURATION_PART.match(s, pos)
        if not m:
            raise ValueError(f'invalid duration "{text}"')
        total += float(m.group(1)) * _DURATION_UNITS[m.group(2)]
        pos = m.end()
    return int(total)


def parse_bytes(text: str) -> int:
    """Docker's RAMInBytes: "64M", "64m", "1g", "512k", "1024" (binary units) -> bytes."""
    m = _SIZE.match(text.strip())
    if not m:
        raise ValueError(f"invalid size: '{text}'")
    return int(float(m.group(1)) * _SIZE_FACTORS[m.group(2).lower()])


def parse_nano_cpus(text: str) -> int:
    """"0.5" -> 500000000 nano CPUs. Refuses negatives and more than 9 decimal places."""
    try:
        value = float(text)
    except ValueError:
        raise ValueError(f'invalid argument "{text}": failed to parse {text} as a rational number') from None
    if value < 0 or value != value:
        raise ValueError(f'invalid argument "{text}": CPU value must be positive')
    return round(value * 1e9)


def format_duration(ns: int) -> str:
    """Nanoseconds as Go prints a time.Duration ("5s", "1m30s", "500ms")."""
    if ns == 0:
        return "0s"
    if ns % 1_000_000_000:
        if ns < 1_000_000_000:
            return f"{ns / 1_000_000:g}ms"
        return f"{ns / 1e9:g}s"
    secs = ns // 1_000_000_000
    h, rem = divmod(secs, 3600)
    m, s = divmod(rem, 60)
    out = (f"{h}h" if h else "") + (f"{m}m" if h or m else "") + f"{s}s"
    return out

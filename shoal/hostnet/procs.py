"""Processes by PID and by command line: finding, signalling and waiting for them to exit."""

from __future__ import annotations

import contextlib
import os
import signal
import time
from collections.abc import Callable
from pathlib import Path

PROC = Path("/proc")


def cmdline(pid: int) -> list[str]:
    """The argv of `pid` ([] when it is gone or a kernel thread)."""
    try:
        raw = (PROC / str(pid) / "cmdline").read_bytes()
    except OSError:
        return []
    return [a.decode(errors="replace") for a in raw.split(b"\0") if a]


def alive(pid: int) -> bool:
    """Whether `pid` exists and is not a zombie."""
    try:
        stat = (PROC / str(pid) / "stat").read_text()
    except OSError:
        return False
    return stat.rpartition(")")[2].split()[0] != "Z"


def pids_matching(predicate: Callable[[list[str]], bool]) -> list[int]:
    """PIDs (other than ours) whose argv satisfies `predicate`."""
    found = []
    for entry in PROC.iterdir():
        if entry.name.isdigit() and int(entry.name) != os.getpid() and predicate(cmdline(int(entry.name))):
            found.append(int(entry.name))
    return sorted(found)


def option_value(argv: list[str], option: str) -> str | None:
    """The value of `option` in argv (`--opt VALUE` or `--opt=VALUE`), None when absent."""
    for i, arg in enumerate(argv):
        if arg == option and i + 1 < len(argv):
            return argv[i + 1]
        if arg.startswith(option + "="):
            return arg[len(option) + 1:]
    return None


def pids_with_option(option: str, value: str, *, prefix: bool = False) -> list[int]:
    """PIDs whose argv passes `option` with `value` (or a value starting with it, if `prefix`)."""
    def matches(argv: list[str]) -> bool:
        v = option_value(argv, option)
        return v is not None and (v == value or (prefix and v.startswith(value)))
    return pids_matching(matches)


def signal_pid(pid: int, sig: signal.Signals) -> None:
    with contextlib.suppress(ProcessLookupError):
        os.kill(pid, sig)


def reap(pid: int) -> None:
    """Collect `pid` if it is our child (no-op otherwise)."""
    with contextlib.suppress(ChildProcessError, OSError):
        os.waitpid(pid, os.WNOHANG)


def wait_gone(pid: int, timeout: float) -> bool:
    """Wait until `pid` has exited (reaping it if it is our child); False on timeout."""
    deadline = time.monotonic() + timeout
    while True:
        reap(pid)
        if not alive(pid):
            return True
        if time.monotonic() > deadline:
            return False
        time.sleep(0.05)


def stop(pid: int, *, kill: bool = False, timeout: float = 20.0) -> None:
    """SIGTERM (SIGKILL when `kill`) `pid`, wait; SIGKILL if it outlives `timeout`."""
    signal_pid(pid, signal.SIGKILL if kill else signal.SIGTERM)
    if not wait_gone(pid, timeout):
        signal_pid(pid, signal.SIGKILL)
        wait_gone(pid, 10.0)

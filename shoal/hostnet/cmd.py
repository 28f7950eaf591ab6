"""Running host tools (`ip`, `nsenter`, `umount`…) with their failures turned into `HostnetError`."""

from __future__ import annotations

import subprocess
from collections.abc import Sequence


class HostnetError(Exception):
    """A host tool failed; the message names the command and carries the tool's stderr."""


def run(argv: Sequence[str], *, stdin: str | None = None, check: bool = True) -> str:
    """Run `argv`, return its stdout; HostnetError with its stderr when `check` and it fails."""
    try:
        proc = subprocess.run(list(argv), input=stdin, capture_output=True, text=True, check=False)
    except FileNotFoundError as e:
        raise HostnetError(f"{argv[0]}: not found (is it installed?)") from e
    if check and proc.returncode != 0:
        raise HostnetError(f"{' '.join(argv)}: {proc.stderr.strip() or f'exit {proc.returncode}'}")
    return proc.stdout


def ip(*args: str, netns: str | None = None, stdin: str | None = None, check: bool = True) -> str:
    """`ip [-n NETNS] ARGS` (with `stdin` for `-batch -`)."""
    prefix = ["ip", "-n", netns] if netns else ["ip"]
    return run([*prefix, *args], stdin=stdin, check=check)


def ip_batch(commands: Sequence[str], *, netns: str | None = None) -> None:
    """Several `ip` commands in one process (`ip -batch -`), the fastest way (host notes §3)."""
    if commands:
        ip("-batch", "-", netns=netns, stdin="\n".join(commands) + "\n")

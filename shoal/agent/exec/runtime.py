"""Thin async wrapper of the crun (or runc: same CLI) command line, with a private --root.

Called by the crun executor (agent/exec/crun.py). The container's stdout/stderr are files, never
pipes: a detached container inherits crun's fds, and a pipe would not reach EOF until the
container exits (host-runtime-notes §2). crun's own messages go to a --log file instead.
"""

from __future__ import annotations

import asyncio
import json
import os
from pathlib import Path
from typing import Any

from shoal.agent.exec.protocol import ExecError


class Runtime:
    def __init__(self, binary: str, root: Path) -> None:
        self.binary = binary
        self.root = root
        self.name = Path(binary).name

    async def _run(self, *args: str, log: Path | None = None) -> tuple[int, str]:
        """Run the runtime with stdout+stderr captured (only for commands that fork no container)."""
        pre = ["--root", str(self.root)] + (["--log", str(log)] if log else [])
        proc = await asyncio.create_subprocess_exec(
            self.binary, *pre, *args, stdin=asyncio.subprocess.DEVNULL,
            stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.STDOUT)
        out, _ = await proc.communicate()
        return proc.returncode or 0, out.decode(errors="replace")

    async def run_detached(self, cid: str, bundle: Path) -> int:
        """`run -d`: start the container with bundle/stdout.raw and stderr.raw; its PID."""
        log, pid_file = bundle / "crun.log", bundle / "pid"
        log.unlink(missing_ok=True)
        pid_file.unlink(missing_ok=True)
        flags = os.O_WRONLY | os.O_APPEND | os.O_CREAT | os.O_CLOEXEC
        out_fd = os.open(bundle / "stdout.raw", flags, 0o640)
        err_fd = os.open(bundle / "stderr.raw", flags, 0o640)
        try:
            proc = await asyncio.create_subprocess_exec(
                self.binary, "--root", str(self.root), "--log", str(log), "run", "-d",
                "--pid-file", str(pid_file), "--bundle", str(bundle), cid,
                stdin=asyncio.subprocess.DEVNULL, stdout=out_fd, stderr=err_fd)
            rc = await proc.wait()
        finally:
            os.close(out_fd)
            os.close(err_fd)
        if rc != 0:
            await self.delete(cid)  # a failed run may leave a created container behind
            raise ExecError(f"{self.name} run: {_last_error(log) or f'exit status {rc}'}")
        return int(pid_file.read_text().strip())

    async def state(self, cid: str) -> dict[str, Any] | None:
        rc, out = await self._run("state", cid)
        if rc != 0:
            return None
        state: dict[str, Any] = json.loads(out)
        return state

    async def kill(self, cid: str, sig: int) -> None:
        """Send `sig` to the container's init; a container already gone is not an error."""
        await self._run("kill", cid, str(sig))

    async def delete(self, cid: str) -> None:
        """`delete -f` (kills first); idempotent."""
        await self._run("delete", "-f", cid)


def _last_error(log: Path) -> str:
    """The last message of crun's JSON-or-text log (crun writes one line per message)."""
    try:
        lines = [ln for ln in log.read_text(errors="replace").splitlines() if ln.strip()]
    except FileNotFoundError:
        return ""
    if not lines:
        return ""
    try:
        entry = json.loads(lines[-1])
        return str(entry.get("msg", lines[-1])) if isinstance(entry, dict) else lines[-1]
    except json.JSONDecodeError:
        return lines[-1]

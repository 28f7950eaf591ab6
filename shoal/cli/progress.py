"""Convergence progress for `service create|update|scale|rollback` without `-d`.

Mirrors docker's cli/command/service/progress: every 200 ms it reads the service, its up-to-date
tasks and the nodes, prints `overall progress: N out of M tasks` and a line per slot (per node for
global services), and once all are running waits `UpdateConfig.Monitor` (5 s by default) for them
to stay running, then prints `verify: Service <ID> converged`. Unlike docker, it gives up with
`Error: <task error>` when every slot keeps failing, and after `--timeout`.
"""

from __future__ import annotations

import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, Protocol

from rich.console import Console, Group
from rich.live import Live
from rich.text import Text

from shoal.api.states import TaskState
from shoal.cli.client import Client, CliError, encode_filters

POLL_SECONDS = 0.2
DEFAULT_MONITOR_NS = 5_000_000_000
# Consecutive polls with every slot failing before giving up (about a second).
FAILING_POLLS = 5
# docker's numberedStates: how far along the bar a state is (running is the end).
_BAR_STATES = ["new", "allocated", "pending", "assigned", "accepted", "preparing", "ready", "starting",
               "running"]
_STATE_WIDTH = max(len(s) for s in _BAR_STATES)
_FAILED = {"failed", "rejected", "orphaned"}


class Renderer(Protocol):
    def show(self, lines: dict[str, str]) -> None: ...
    def close(self) -> None: ...


class LineRenderer:
    """Without a TTY: print each `key: text` line when its text changes."""

    def __init__(self, write: Callable[[str], None]) -> None:
        self._write = write
        self._seen: dict[str, str] = {}

    def show(self, lines: dict[str, str]) -> None:
        for key, text in lines.items():
            if self._seen.get(key) != text:
                self._seen[key] = text
                self._write(f"{key}: {text}".rstrip())

    def close(self) -> None:
        return None


class LiveRenderer:
    """With a TTY: one rich Live block redrawn in place."""

    def __init__(self) -> None:
        self._live = Live(Text(""), console=Console(), auto_refresh=False, transient=False)
        self._live.start()

    def show(self, lines: dict[str, str]) -> None:
        block = Group(*(Text(f"{k}: {v}") for k, v in lines.items()))
        self._live.update(block, refresh=True)

    def close(self) -> None:
        self._live.stop()


class NullRenderer:
    def show(self, lines: dict[str, str]) -> None:
        return None

    def close(self) -> None:
        return None


def bar(state: str) -> str:
    """`running   [====...>]`: the state padded, then docker's 50-wide bar."""
    if state not in _BAR_STATES:
        return state
    filled = int(50 * (_BAR_STATES.index(state) + 1) / len(_BAR_STATES))
    return f"{state:<{_STATE_WIDTH}} [{'=' * filled}>{' ' * (50 - filled)}]"


def _rank(state: str) -> int:
    try:
        return TaskState(state).rank
    except ValueError:
        return 0


def _terminal(state: str) -> bool:
    return _rank(state) >= TaskState.COMPLETE.rank


@dataclass
class Snapshot:
    """One poll: the tasks of each slot (or node), and which task each slot shows."""

    desired: int
    groups: dict[str, list[dict[str, Any]]]
    shown: dict[str, dict[str, Any]] = field(default_factory=dict)

    @property
    def running(self) -> int:
        return sum(1 for t in self.shown.values()
                   if t["Status"].get("State") == "running" and not _terminal(t.get("DesiredState", "")))

    def failing_error(self) -> str | None:
        """The newest task error if every slot keeps failing, else None."""
        if not self.groups or len(self.groups) < self.desired:
            return None
        errors: list[tuple[str, str]] = []
        for tasks in self.groups.values():
            failed = [t for t in tasks if t["Status"].get("State") in _FAILED]
            if not failed or any(t["Status"].get("State") == "running" for t in tasks):
                return None
            retry_pending = any(not _terminal(t["Status"].get("State", "")) for t in tasks)
            if len(failed) < 2 and retry_pending:
                return None
            newest = max(failed, key=lambda t: str(t["Status"].get("Timestamp", "")))
            errors.append((str(newest["Status"].get("Timestamp", "")), newest["Status"].get("Err") or
                           f"task {newest['Status'].get('State')}: {newest['Status'].get('Message', '')}"))
        return max(errors)[1]


def _pick(tasks: list[dict[str, Any]]) -> dict[str, Any]:
    """docker's choice per slot: lowest desired state, then lowest observed state."""
    return min(tasks, key=lambda t: (_rank(t.get("DesiredState", "")), _rank(t["Status"].get("State", ""))))


def snapshot(service: dict[str, Any], tasks: list[dict[str, Any]], nodes: list[dict[str, Any]]) -> Snapshot:
    down = {n["ID"] for n in nodes if (n.get("Status") or {}).get("State") == "down"}
    mode = service["Spec"].get("Mode") or {}
    is_global = "Global" in mode
    replicas = int((mode.get("Replicated") or {}).get("Replicas", 1)) if not is_global else 0
    groups: dict[str, list[dict[str, Any]]] = {}
    for task in tasks:
        task.setdefault("Status", {})
        if task.get("NodeID") and task["NodeID"] in down:
            continue
        if is_global:
            if not task.get("NodeID"):
                continue
            key = task["NodeID"]
        else:
            if int(task.get("Slot", 0)) > replicas:
                continue
            key = f"{task.get('Slot', 0)}/{replicas}"
        groups.setdefault(key, []).append(task)
    shown = {k: _pick(v) for k, v in groups.items()}
    if is_global:
        replicas = sum(1 for t in shown.values() if not _terminal(t.get("DesiredState", "")))
    ordered = dict(sorted(shown.items(), key=lambda kv: (int(kv[1].get("Slot", 0)), kv[0])))
    return Snapshot(desired=replicas, groups=groups, shown=ordered)


def slot_lines(snap: Snapshot, is_global: bool) -> dict[str, str]:
    lines = {"overall progress": f"{snap.running} out of {snap.desired} tasks"}
    if is_global and not snap.shown:
        lines["overall progress"] = "waiting for new tasks"
    for key, task in snap.shown.items():
        label = key[:12] if is_global else key
        err = task["Status"].get("Err")
        lines[label] = err.splitlines()[0] if err else bar(task["Status"].get("State", ""))
    return lines


def _update_status_check(service: dict[str, Any], converged: bool, lines: dict[str, str]) -> bool:
    """docker's UpdateStatus handling; True means stop watching now (update completed elsewhere)."""
    status = service.get("UpdateStatus") or {}
    state, message = status.get("State", ""), status.get("Message", "")
    if state == "completed" and not converged:
        return True
    if state == "paused":
        raise CliError(f"service update paused: {message}")
    if state == "rollback_paused":
        raise CliError(f"service rollback paused: {message}")
    if state in ("rollback_started", "rollback_completed") and message:
        lines["rollback"] = message
    return False


@dataclass
class Watch:
    """The convergence loop of one service; `sleep` and `clock` are injectable for tests."""

    client: Client
    service_id: str
    renderer: Renderer
    timeout_s: float | None = None
    sleep: Callable[[float], None] = time.sleep
    clock: Callable[[], float] = time.monotonic

    def poll(self) -> tuple[dict[str, Any], Snapshot]:
        service = self.client.get(f"/services/{self.service_id}", {"insertDefaults": "false"})
        query = encode_filters({"_up-to-date": ["true"], "service": [self.service_id]})
        tasks = self.client.get("/tasks", {"filters": query}) or []
        nodes = self.client.get("/nodes") or []
        return service, snapshot(service, tasks, nodes)

    def run(self) -> None:
        start, converged_at, failing = self.clock(), None, 0
        try:
            while True:
                service, snap = self.poll()
                lines = slot_lines(snap, "Global" in (service["Spec"].get("Mode") or {}))
                converged = snap.running == snap.desired and snap.desired > 0
                if _update_status_check(service, converged_at is not None, lines):
                    return
                monitor_ns = (service["Spec"].get("UpdateConfig") or {}).get("Monitor") or DEFAULT_MONITOR_NS
                if converged:
                    converged_at = converged_at if converged_at is not None else self.clock()
                    left = monitor_ns / 1e9 - (self.clock() - converged_at)
                    if left <= 0:
                        lines["verify"] = f"Service {service['ID']} converged"
                        self.renderer.show(lines)
                        return
                    lines["verify"] = f"Waiting {int(left) + 1} seconds to verify that tasks are stable..."
                elif converged_at is not None:
                    lines["verify"] = "Detected task failure"
                    converged_at = None
                self.renderer.show(lines)
                error = snap.failing_error()
                failing = failing + 1 if error else 0
                if error and failing >= FAILING_POLLS:
                    raise CliError(f"Error: {error}")
                if self.timeout_s is not None and self.clock() - start >= self.timeout_s:
                    raise CliError(f"Error: timed out waiting for service {self.service_id} to converge")
                self.sleep(POLL_SECONDS)
        except KeyboardInterrupt:
            raise CliError("Operation continuing in background.", exit_code=130) from None
        finally:
            self.renderer.close()


def watch(client: Client, service_id: str, quiet: bool, timeout_ns: int | None) -> None:
    """Watch a service converge, drawing progress on stdout (live on a TTY)."""
    renderer: Renderer
    if quiet:
        renderer = NullRenderer()
    elif sys.stdout.isatty():
        renderer = LiveRenderer()
    else:
        renderer = LineRenderer(lambda line: print(line, flush=True))
    timeout = timeout_ns / 1e9 if timeout_ns else None
    Watch(client, service_id, renderer, timeout).run()

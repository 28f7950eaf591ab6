"""A lab's state file (/run/shoal/lab/LAB/state.json) and the lock that serialises lab changes.

The state records what `up` decided (subnet, addresses, images) and each shoald's PID. It is
written after every step, so a half-made lab still describes what exists; `down` does not need
it (it derives everything from names) but uses the PIDs it finds.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
from collections.abc import Iterator
from dataclasses import asdict, dataclass, field

from shoal.lab import names


@dataclass
class HostState:
    name: str
    index: int
    address: str  # without prefix length
    pid: int = 0


@dataclass
class LabState:
    name: str
    subnet: str  # the switch subnet, e.g. 10.199.0.0/24
    images: list[str] = field(default_factory=list)
    hosts: list[HostState] = field(default_factory=list)

    @property
    def prefixlen(self) -> int:
        return int(self.subnet.partition("/")[2])

    def host(self, name: str) -> HostState:
        names.host_index(name)  # LabError for a malformed name
        for h in self.hosts:
            if h.name == name:
                return h
        raise names.LabError(f"lab {self.name!r} has no host {name!r} "
                             f"(hosts: {', '.join(h.name for h in self.hosts)})")


def save(state: LabState) -> None:
    path = names.state_file(state.name)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".tmp")
    tmp.write_text(json.dumps(asdict(state), indent=2) + "\n")
    os.replace(tmp, path)


def load(lab: str) -> LabState | None:
    """The lab's state, or None when it has no (readable) state file."""
    try:
        data = json.loads(names.state_file(lab).read_text())
        hosts = [HostState(**h) for h in data.pop("hosts", [])]
        return LabState(**data, hosts=hosts)
    except (OSError, ValueError, TypeError):
        return None


def require(lab: str) -> LabState:
    names.check_name(lab)
    state = load(lab)
    if state is None:
        raise names.LabError(f"no lab named {lab!r} (see `shoal lab ls`)")
    return state


def all_states() -> list[LabState]:
    return [s for s in (load(n) for n in names.labs_on_disk()) if s is not None]


@contextlib.contextmanager
def locked() -> Iterator[None]:
    """Hold the machine-wide lab lock (subnet choice, creating and removing labs)."""
    names.RUN_ROOT.mkdir(parents=True, exist_ok=True)
    with open(names.LOCK_FILE, "a+") as f:
        fcntl.flock(f, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(f, fcntl.LOCK_UN)

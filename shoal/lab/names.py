"""Names and paths of a lab and its hosts; the single place that spells them.

| what | where |
|---|---|
| state | `/run/shoal/lab/LAB/state.json` (+ `.lock` in /run/shoal/lab) |
| API socket of nodeI | `/run/shoal/lab/LAB/nodeI.sock` |
| UTS namespace file of nodeI | `/run/shoal/lab/LAB/nodeI.uts` |
| data root of nodeI | `/var/lib/shoal/lab/LAB/nodeI` (daemon output in `shoald.out` there) |
| switch netns / bridge | `shoal-lab-LAB-sw` / `br0` |
| host netns | `shoal-lab-LAB-nodeI` |
| veth | `nodeI` in the switch netns (≤ 15 chars), `eth0` in the host netns |
| shoald's host objects | instance tag I = sha256(realpath(data root))[:8] (docs/architecture.md) |
"""

from __future__ import annotations

import hashlib
import os
import re
from pathlib import Path

RUN_ROOT = Path("/run/shoal/lab")
DATA_ROOT = Path("/var/lib/shoal/lab")
LOCK_FILE = RUN_ROOT / ".lock"
DEFAULT_NAME = "lab"
MAX_NODES = 64
SWITCH_BRIDGE = "br0"
HOST_DEV = "eth0"
CLUSTER_PORT = 2377

_NAME = re.compile(r"^[a-z0-9]{1,8}$")
_HOST = re.compile(r"^node([1-9][0-9]*)$")


class LabError(Exception):
    """A user-facing failure of a lab command; the message is printed as is."""


def valid_name(name: str) -> bool:
    return bool(_NAME.match(name))


def check_name(name: str) -> str:
    if not valid_name(name):
        raise LabError(f"invalid lab name {name!r}: use 1 to 8 characters of [a-z0-9]")
    return name


def host_name(index: int) -> str:
    return f"node{index}"


def host_index(host: str) -> int:
    """`nodeI` -> I; LabError for anything else."""
    m = _HOST.match(host)
    if not m:
        raise LabError(f"invalid host {host!r}: hosts are named node1, node2, ...")
    return int(m.group(1))


def run_dir(lab: str) -> Path:
    return RUN_ROOT / lab


def state_file(lab: str) -> Path:
    return run_dir(lab) / "state.json"


def data_dir(lab: str) -> Path:
    return DATA_ROOT / lab


def data_root(lab: str, host: str) -> Path:
    return data_dir(lab) / host


def socket_path(lab: str, host: str) -> Path:
    return run_dir(lab) / f"{host}.sock"


def uts_file(lab: str, host: str) -> Path:
    return run_dir(lab) / f"{host}.uts"


def netns_prefix(lab: str) -> str:
    return f"shoal-lab-{lab}-"


def switch_netns(lab: str) -> str:
    return f"{netns_prefix(lab)}sw"


def host_netns(lab: str, host: str) -> str:
    return f"{netns_prefix(lab)}{host}"


def switch_port(host: str) -> str:
    """The switch side of a host's veth (in the switch netns, so unique per lab)."""
    return host


def instance_tag(path: Path) -> str:
    """shoald's instance tag for a data root: sha256(realpath(D))[:8]."""
    return hashlib.sha256(os.path.realpath(path).encode()).hexdigest()[:8]


def bridge_cidr(index: int) -> str:
    """The subnet of the task bridge inside host `index` (hosts are separate netns; kept distinct
    anyway, and outside the switch subnets of 10.199.0.0/16)."""
    return f"172.30.{index}.0/24"


def labs_on_disk() -> list[str]:
    """Every lab that has anything left in /run/shoal/lab or /var/lib/shoal/lab."""
    names: set[str] = set()
    for root in (RUN_ROOT, DATA_ROOT):
        if root.is_dir():
            names.update(p.name for p in root.iterdir() if p.is_dir() and _NAME.match(p.name))
    return sorted(names)

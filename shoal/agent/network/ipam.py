"""Address allocation on the host bridge's subnet, persisted so a restart never reuses a live address.

Used by the crun executor (agent/exec/crun.py): the first host address is the bridge's gateway,
tasks get free ones after it, round-robin from the last one handed out (as Docker's IPAM), so an
address just freed is not reused at once while peers may still cache its old MAC. The
allocations live in D/network/ipam.json, rewritten atomically (temp file + rename) on each change.
"""

from __future__ import annotations

import ipaddress
import os
from pathlib import Path

import msgspec


class AddressPoolExhausted(Exception):
    pass


class Ipam:
    def __init__(self, state_file: Path, cidr: str) -> None:
        self.network = ipaddress.IPv4Network(cidr, strict=True)
        if self.network.num_addresses < 4:
            raise ValueError(f"bridge subnet {cidr} is too small")
        self.gateway = self.network.network_address + 1
        self._file = state_file
        self._leases: dict[str, str] = {}
        if state_file.exists():
            self._leases = msgspec.json.decode(state_file.read_bytes(), type=dict[str, str])
        # The last address handed out; after a restart, the highest one still leased.
        self._cursor = max((int(ipaddress.IPv4Address(a)) for a in self._leases.values()),
                           default=int(self.gateway))

    @property
    def prefixlen(self) -> int:
        return self.network.prefixlen

    def lookup(self, task_id: str) -> str | None:
        return self._leases.get(task_id)

    def allocate(self, task_id: str) -> str:
        """The task's address (the same one again if it already has one)."""
        if task_id in self._leases:
            return self._leases[task_id]
        used = set(self._leases.values())
        first = int(self.gateway) + 1
        size = int(self.network.broadcast_address) - first  # hosts after the gateway
        for step in range(1, size + 1):
            candidate = first + (self._cursor - first + step) % size
            address = str(ipaddress.IPv4Address(candidate))
            if address not in used:
                self._cursor = candidate
                self._leases[task_id] = address
                self._save()
                return address
        raise AddressPoolExhausted(f"no free address left in {self.network} for task {task_id}")

    def release(self, task_id: str) -> None:
        if self._leases.pop(task_id, None) is not None:
            self._save()

    def _save(self) -> None:
        self._file.parent.mkdir(parents=True, exist_ok=True)
        tmp = self._file.with_suffix(".tmp")
        tmp.write_bytes(msgspec.json.encode(self._leases))
        os.replace(tmp, self._file)

"""The host bridge's address allocator: stable per task, round-robin, persisted, bounded."""

from __future__ import annotations

from pathlib import Path

import pytest

from shoal.agent.network.ipam import AddressPoolExhausted, Ipam


def test_addresses_skip_the_gateway_and_are_stable_per_task(tmp_path: Path) -> None:
    ipam = Ipam(tmp_path / "ipam.json", "10.9.0.0/29")
    assert ipam.allocate("a") == "10.9.0.2"
    assert ipam.allocate("a") == "10.9.0.2"
    assert ipam.allocate("b") == "10.9.0.3"


def test_a_freed_address_is_not_reused_before_the_pool_wraps(tmp_path: Path) -> None:
    ipam = Ipam(tmp_path / "ipam.json", "10.9.0.0/29")
    first = ipam.allocate("a")
    ipam.release("a")
    assert ipam.allocate("b") != first  # a peer may still cache a's MAC for that address


def test_leases_survive_a_restart_and_exhaustion_is_reported(tmp_path: Path) -> None:
    ipam = Ipam(tmp_path / "ipam.json", "10.9.0.0/29")
    taken = {ipam.allocate(f"t{n}") for n in range(5)}
    again = Ipam(tmp_path / "ipam.json", "10.9.0.0/29")
    assert again.lookup("t0") in taken
    with pytest.raises(AddressPoolExhausted, match=r"no free address left in 10\.9\.0\.0/29"):
        again.allocate("one-too-many")

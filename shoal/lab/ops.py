"""Commands on a lab that exists: listing, stopping and starting hosts, cutting links, exec.

Each takes the lab's name, loads its state (LabError when there is none) and, where it changes
a PID, saves the state again.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from dataclasses import dataclass

from shoal.hostnet import netns
from shoal.lab import host as lab_host
from shoal.lab import names, net
from shoal.lab import state as lab_state


@dataclass(frozen=True)
class HostStatus:
    name: str
    address: str
    running: bool
    link_up: bool

    @property
    def text(self) -> str:
        return ("up" if self.running else "down") + ("" if self.link_up else "(link down)")


def status(lab: str) -> list[HostStatus]:
    st = lab_state.require(lab)
    return [HostStatus(h.name, h.address, lab_host.is_running(lab, h), net.link_is_up(lab, h.name))
            for h in st.hosts]


def stop(lab: str, host: str, *, kill: bool = False) -> None:
    """The host dies: its shoald (SIGTERM, or SIGKILL with `kill`) and its containers."""
    st = lab_state.require(lab)
    h = st.host(host)
    lab_host.stop(lab, h, kill=kill)
    lab_state.save(st)


def start(lab: str, host: str) -> bool:
    """Start the host's shoald again (it resumes its swarm role); False if it was running."""
    st = lab_state.require(lab)
    h = st.host(host)
    if lab_host.is_running(lab, h):
        return False
    try:
        lab_host.start(st, h)
    finally:
        lab_state.save(st)
    return True


def link(lab: str, host: str, up: bool) -> None:
    st = lab_state.require(lab)
    net.set_link(lab, st.host(host).name, up)


def host_env(lab: str, host: str) -> dict[str, str]:
    """DOCKER_HOST and SHOAL_HOST pointing at the host's API socket."""
    url = f"unix://{names.socket_path(lab, host)}"
    return {"DOCKER_HOST": url, "SHOAL_HOST": url}


def exec_argv(lab: str, host: str, cmd: Sequence[str]) -> tuple[list[str], dict[str, str]]:
    """argv and environment that run `cmd` in the host's network and UTS namespaces (in the
    root mount namespace) with DOCKER_HOST/SHOAL_HOST set to the host's socket."""
    st = lab_state.require(lab)
    h = st.host(host)
    ns = names.host_netns(lab, h.name)
    if not netns.exists(ns):
        raise names.LabError(f"host {h.name} of lab {lab!r} has no network namespace (half-made lab?)")
    argv = netns.nsenter_argv(list(cmd), netns=ns, uts_file=names.uts_file(lab, h.name))
    return argv, {**os.environ, **host_env(lab, h.name)}

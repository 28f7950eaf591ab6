"""`shoal lab up`: create a lab's network and hosts, start every shoald, form the swarm.

A lab that exists (anything of it left) is refused: `lab down` it first. When a step fails the
half-made lab stays for inspection (each host's `shoald.out`), and `lab down` removes it.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from pathlib import Path

from shoal.hostnet import netns
from shoal.lab import host as lab_host
from shoal.lab import names, net, swarm
from shoal.lab import state as lab_state
from shoal.lab.state import HostState, LabState

Report = Callable[[str], None]


def _quiet(_: str) -> None:
    pass


def exists(lab: str) -> bool:
    """Whether anything of the lab is left: state, directories or namespaces."""
    return (names.run_dir(lab).exists() or names.data_dir(lab).exists()
            or bool(netns.list_names(names.netns_prefix(lab))))


def plan(lab: str, nodes: int, images: Sequence[Path]) -> LabState:
    """Choose the lab's subnet and addresses and record them (under the lab lock)."""
    names.check_name(lab)
    if not 1 <= nodes <= names.MAX_NODES:
        raise names.LabError(f"--nodes must be between 1 and {names.MAX_NODES}")
    with lab_state.locked():
        if exists(lab):
            raise names.LabError(f"lab {lab!r} already exists; remove it first: "
                                 f"shoal lab down --name {lab}")
        subnet = net.pick_subnet([s.subnet for s in lab_state.all_states()])
        hosts = [HostState(names.host_name(i), i, net.host_address(subnet, i)) for i in range(1, nodes + 1)]
        state = LabState(lab, str(subnet), images=[str(Path(p).resolve()) for p in images], hosts=hosts)
        lab_state.save(state)
    return state


def start_daemons(state: LabState) -> None:
    """Spawn every host's shoald at once, then wait for each to answer /_ping."""
    for h in state.hosts:
        h.pid = lab_host.spawn(state, h)
    lab_state.save(state)
    for h in state.hosts:
        lab_host.start_wait(state, h)


def up(lab: str, nodes: int, images: Sequence[Path], *, dispatcher_heartbeat_ns: int = 0,
       join: bool = True, report: Report = _quiet) -> LabState:
    """Make the lab; returns its state. `join=False` stops after `swarm init` on node1."""
    state = plan(lab, nodes, images)
    report(f"lab {lab}: {nodes} host(s) on {state.subnet}")
    net.make_switch(lab)
    for h in state.hosts:
        net.make_host(state, h)
    start_daemons(state)
    swarm.init(state, dispatcher_heartbeat_ns)
    report(f"{state.hosts[0].name}  {state.hosts[0].address}  manager")
    if join:
        for h in state.hosts[1:]:
            swarm.join(state, h)
            report(f"{h.name}  {h.address}  worker")
        swarm.wait_ready(state)
    return state

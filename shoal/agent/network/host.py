"""`HostNetwork`: one host's overlay data path, kept equal to the manager's latest NetworkState.

One per shoald (daemon/main.py builds it with the host's `DnsServer`). Two callers:

- the executor (agent/exec/crun.py), per task: `attach_task` in prepare (after eth0 on the host
  bridge: the overlay networks are ensured here, the task gets `eth1`, `eth2`, … on them, the
  embedded resolver serves its netns, its VIP table and, on ingress, its mesh reply routing are
  programmed) and `detach_task` in remove (resolver, veths, and networks no local task uses and
  the state no longer lists);
- the agent, per NetworkState message: `submit(state)`; a background loop applies the latest one
  (states that arrive meanwhile are coalesced: each is the whole view). At Registered the agent
  submits the empty view the manager assumes (the manager sends nothing while the view stays
  empty); it is applied only when no real view follows within `ASSUMED_DELAY_S`. Applying: every listed
  network ensured with its flood list (`set_peers`), the resolver's records rebuilt, each local
  task's VIP table reprogrammed when it changed, the host's ingress mesh programmed, networks
  neither listed nor used removed. Everything is computed by agent/netstate.py.

The node's underlay address (VXLAN `local`) and its ingress address come with the state. A task
prepared before the first state arrives waits for it (at most `STATE_WAIT_S`), then uses
`fallback_addr` (the node's advertised address) and no ingress address; the next state fixes
both (`ensure_network` recreates a vxlan with another local address; the bridge and the tasks'
veths stay).

SAFETY — the routing mesh turns on forwarding on the underlay device and the ingress bridge. It
is programmed only in a namespace WITHOUT a default route (lab hosts, test namespaces). In a
namespace with one (a real machine's root namespace, whose uplink is the default route) the mesh
is skipped entirely — no forwarding, no DNAT, and the ingress bridge gets no address — so shoald
can never route or NAT toward the real uplink; tasks there still get their overlays, DNS and VIPs.
Host-mode published ports (agent/network/hostports.py, table `shoal_hostports`) follow the same
rule: DNAT of remote clients and forwarding only without a default route, the output hook (local
clients) only with one. Every local task is known here, with or without overlay networks (a
task on none is only recorded: no process is run for it). When the state's `host_ports` first
names a local task, its host bridge address is read from its eth0 and its reply routing
programmed (`hostports.prepare_task`), before the serving ones' ports are published.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
from dataclasses import dataclass, field
from pathlib import Path

from shoal.agent import netstate as ns
from shoal.agent.exec.protocol import ExecError
from shoal.agent.netstate import LocalAttachment
from shoal.agent.network import hostports, lb, mesh, overlay
from shoal.agent.network.dns import DnsServer
from shoal.api.protocol import NetworkState, OverlayNetwork
from shoal.api.types import Task

log = logging.getLogger("shoal.agent.network")

STATE_WAIT_S = 5.0  # prepare waits this long for the first NetworkState
ASSUMED_DELAY_S = 1.0  # an assumed empty view is applied only if no real one follows this soon


@dataclass
class _LocalTask:
    netns: str
    attachments: list[LocalAttachment]
    vips: list[lb.VipService] | None = None  # last programmed table
    backend_key: tuple[object, ...] | None = None  # last arguments given to mesh.prepare_backend
    bridge_cidr: str | None = None  # its eth0 "addr/len" on the host bridge, once read ("" if none)
    reply_key: tuple[int, ...] | None = None  # UDP ports last given to hostports.prepare_task

    @property
    def network_ids(self) -> set[str]:
        return {a.network_id for a in self.attachments}


@dataclass
class _Ensured:
    network_id: str
    ingress: bool
    params: tuple[str, str | None, str, bool]  # subnet, gateway, local address, has a vxlan
    peers: set[str] | None = None


@dataclass
class _Mesh:
    vni: int
    dev: str
    key: tuple[object, ...] = field(default_factory=tuple)


class HostNetwork:
    """See the module docstring. Use on the running loop; `close` at shutdown."""

    def __init__(self, dns: DnsServer, *, fallback_addr: str = "", host_netns: str | None = None,
                 state_wait_s: float = STATE_WAIT_S) -> None:
        self.dns = dns
        self.fallback_addr = fallback_addr  # the node's advertised address, until a state says
        self._netns = host_netns  # None: shoald's own namespace
        self._state_wait_s = state_wait_s
        self._state: NetworkState | None = None
        self._have_state = asyncio.Event()
        self._pending: NetworkState | None = None
        self._wake = asyncio.Event()
        self._loop: asyncio.Task[None] | None = None
        self._lock = asyncio.Lock()
        self._tasks: dict[str, _LocalTask] = {}
        self._ensured: dict[int, _Ensured] = {}
        self._mesh: _Mesh | None = None
        self._mesh_allowed: bool | None = None
        self._hostports = hostports.HostPorts(host_netns)
        self._udp_memo: tuple[NetworkState, dict[str, tuple[int, ...]]] | None = None

    @property
    def state(self) -> NetworkState | None:
        return self._state

    # ------------------------------------------------------------------------------ the state
    def submit(self, state: NetworkState) -> None:
        """A NetworkState from the manager; applied in the background, the latest one wins."""
        self._pending = state
        self._wake.set()
        if self._loop is None or self._loop.done():
            self._loop = asyncio.create_task(self._apply_loop(), name="network-state")

    async def _apply_loop(self) -> None:
        while True:
            await self._wake.wait()
            self._wake.clear()
            state, self._pending = self._pending, None
            if state is None:
                continue
            if not state.node_addr and not state.networks:  # the empty view assumed at Registered
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(self._wake.wait(), ASSUMED_DELAY_S)
                if self._pending is not None:
                    continue  # a real view came: that one is applied instead
            try:
                await self.apply(state)
            except Exception:  # the next state tries again; the session must not suffer
                log.exception("applying the network state failed")

    async def apply(self, state: NetworkState) -> None:
        """Make the host match `state` (see the module docstring)."""
        async with self._lock:
            self._state = state
            self._have_state.set()
            self.dns.records = ns.dns_records(state)
            for net in state.networks:
                await self._ensure(net, state)
            for task_id, local in list(self._tasks.items()):
                if local.attachments:  # a task on no overlay has no VIP table nor mesh routing
                    await self._program_task(task_id, local, state)
            await self._program_mesh(state)
            await self._program_hostports(state)
            listed = {n.vni for n in state.networks}
            for vni in [v for v in self._ensured if v not in listed]:
                await self._remove_if_unused(vni)

    async def close(self) -> None:
        """shoald stops: the resolver closes and networks no local task uses are removed (the
        containers keep running with theirs, for the next shoald to adopt)."""
        if self._loop is not None:
            self._loop.cancel()
            await asyncio.gather(self._loop, return_exceptions=True)
        await self.dns.close()
        async with self._lock:
            for vni in list(self._ensured):
                try:
                    await self._remove_if_unused(vni)
                except ExecError as e:
                    log.warning("network with VNI %d not removed: %s", vni, e)
            with contextlib.suppress(ExecError):
                await self._hostports.clear(mesh_dev=self._mesh.dev if self._mesh else None)

    # ------------------------------------------------------------------------------- tasks
    async def attach_task(self, task: Task, netns: str, netns_path: Path) -> list[LocalAttachment]:
        """Attach a prepared task's netns to its overlay networks; [] when it has none (the task
        is still known: host-mode published ports may name it)."""
        atts = ns.attachments_of(task)
        if not atts:
            self._tasks.setdefault(task.id, _LocalTask(netns, [], vips=[]))
            return []
        await self._wait_state()
        async with self._lock:
            state = self._state
            by_id = {n.network_id: n for n in state.networks} if state else {}
            for att in atts:
                await self._ensure(by_id.get(att.network_id) or ns.network_of(att), state)
                await overlay.attach(netns, att.vni, att.ifname, att.address_cidr,
                                     host_netns=self._netns)
            local = _LocalTask(netns, atts)
            self._tasks[task.id] = local
            await self.dns.add_container(task.id, netns_path, local.network_ids)
            if state is not None:
                await self._program_task(task.id, local, state)
        return atts

    async def adopt_task(self, task_id: str, netns: str, netns_path: Path,
                         atts: list[LocalAttachment]) -> None:
        """A running container left by a previous shoald: serve DNS and reprogram it again."""
        if task_id in self._tasks:
            return
        if not atts:
            self._tasks[task_id] = _LocalTask(netns, [], vips=[])
            return
        async with self._lock:
            local = _LocalTask(netns, atts)
            self._tasks[task_id] = local
            await self.dns.add_container(task_id, netns_path, local.network_ids)
            if self._state is not None:
                await self._program_task(task_id, local, self._state)

    async def detach_task(self, task_id: str, netns: str, atts: list[LocalAttachment]) -> None:
        """Undo `attach_task` (idempotent); `atts` serve when this process never attached it."""
        await self.dns.remove_container(task_id)
        async with self._lock:
            local = self._tasks.pop(task_id, None)
            attachments = local.attachments if local is not None else atts
            for att in attachments:
                await overlay.detach(netns, att.ifname, host_netns=self._netns)
            listed = {n.vni for n in self._state.networks} if self._state else set()
            for vni in {a.vni for a in attachments} - listed:
                await self._remove_if_unused(vni)
            if local is not None and local.reply_key is not None and self._state is not None:
                await self._program_hostports(self._state)

    def publishes(self, task_id: str) -> bool:
        """Whether a host-mode published port has named this task (so it is drained before it stops)."""
        local = self._tasks.get(task_id)
        return local is not None and local.reply_key is not None

    def uses_networks(self, task_id: str) -> bool:
        """Whether this task is known here (attached or adopted; with or without overlays)."""
        return task_id in self._tasks

    async def _wait_state(self) -> None:
        if self._state is None:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._have_state.wait(), self._state_wait_s)

    # ----------------------------------------------------------------------------- networks
    async def _ensure(self, net: OverlayNetwork, state: NetworkState | None) -> None:
        local_ip = state.node_addr if state is not None and state.node_addr else self.fallback_addr
        if not local_ip:
            raise ExecError("this node's underlay address is not known yet", temporary=True)
        gateway = None
        if net.ingress and state is not None and state.ingress_addr and await self.mesh_allowed():
            gateway = state.ingress_addr
        peers = ns.peers_of(state, net.network_id) if state is not None else set()
        # The vxlan device only once another host shares the network (see ensure_network).
        params = (net.subnet, gateway, local_ip, bool(peers))
        known = self._ensured.get(net.vni)
        if known is None or known.params[:3] != params[:3] or (params[3] and not known.params[3]):
            await overlay.ensure_network(net.vni, net.subnet, gateway, local_ip, netns=self._netns,
                                         vxlan=bool(peers))
            known = self._ensured[net.vni] = _Ensured(net.network_id, net.ingress, params)
        if state is not None and peers != known.peers and (peers or known.params[3]):
            await overlay.set_peers(net.vni, peers, netns=self._netns)
            known.peers = peers

    async def _remove_if_unused(self, vni: int) -> None:
        if any(a.vni == vni for t in self._tasks.values() for a in t.attachments):
            return
        if self._mesh is not None and self._mesh.vni == vni:
            await mesh.clear_ingress(self._mesh.dev, vni, netns=self._netns)
            self._mesh = None
        try:
            await overlay.remove_network(vni, netns=self._netns)
        except overlay.NetworkInUse:  # e.g. another shoald on this namespace uses the VNI too
            log.info("network with VNI %d still in use on this host; kept", vni)
        self._ensured.pop(vni, None)

    # ------------------------------------------------------------------------- programming
    async def _program_task(self, task_id: str, local: _LocalTask, state: NetworkState) -> None:
        try:
            vips = ns.vip_table(state, local.network_ids)
            if vips != local.vips:
                await lb.program_vips(local.netns, vips)
                local.vips = vips
            ingress = next((a for a in local.attachments if a.ingress), None)
            if ingress is not None:
                hosts, udp = tuple(state.ingress_hosts), self._udp_ports(state).get(task_id, ())
                own = state.ingress_addr if await self.mesh_allowed() else ""  # no mesh: no UDP route
                key = (hosts, own, udp)
                if key != local.backend_key:
                    await mesh.prepare_backend(local.netns, ingress.ifname, ingress.subnet, hosts,
                                               own_ip=own, udp_ports=udp)
                    local.backend_key = key
        except ExecError as e:  # e.g. the netns went away under us: the next state retries
            log.warning("task %s: cannot program its load balancing: %s", task_id, e)

    def _udp_ports(self, state: NetworkState) -> dict[str, tuple[int, ...]]:
        """ns.ingress_udp_ports(state), computed once per state (not once per local task)."""
        if self._udp_memo is None or self._udp_memo[0] is not state:
            self._udp_memo = (state, ns.ingress_udp_ports(state))
        return self._udp_memo[1]

    async def _bridge_cidr(self, netns: str) -> str:
        try:
            return await hostports.task_bridge_address(netns)
        except (ExecError, OSError, ValueError) as e:
            log.warning("netns %s: no host bridge address for host-mode ports: %s", netns, e)
            return ""

    async def _prepare_reply_routing(self, state: NetworkState) -> None:
        """Each local task a host-mode port names: its bridge address, and its reply routing."""
        named = {t.task_id for svc in state.host_ports for t in svc.tasks}
        for task_id in sorted(named & self._tasks.keys()):
            local = self._tasks[task_id]
            if local.bridge_cidr is None:
                local.bridge_cidr = await self._bridge_cidr(local.netns)
            udp = hostports.task_udp_ports(state, task_id)
            if local.bridge_cidr and udp != local.reply_key:
                try:
                    await hostports.prepare_task(local.netns, local.bridge_cidr, udp)
                    local.reply_key = udp
                except ExecError as e:  # e.g. the netns went away: the next state retries
                    log.warning("task %s: cannot program its reply routing: %s", task_id, e)

    async def _program_hostports(self, state: NetworkState) -> None:
        """Host-mode published ports of the serving local tasks (see agent/network/hostports.py)."""
        await self._prepare_reply_routing(state)
        local = {tid: t.bridge_cidr.split("/")[0] for tid, t in self._tasks.items()
                 if t.bridge_cidr and t.reply_key is not None}
        rules = hostports.plan(state, local)
        try:
            allowed = bool(rules) and await self.mesh_allowed()
            await self._hostports.sync(rules, state.node_addr, forward_allowed=allowed,
                                       mesh_dev=self._mesh.dev if self._mesh else None)
        except ExecError as e:  # the next state retries
            log.warning("cannot program host-mode published ports: %s", e)

    async def mesh_allowed(self) -> bool:
        """Whether this namespace may run the routing mesh: only when it has no default route."""
        if self._mesh_allowed is None:
            out = await overlay.ipn(self._netns, "-j", "-4", "route", "show", "default")
            self._mesh_allowed = not json.loads(out or "[]")
            if not self._mesh_allowed:
                log.warning("this namespace has a default route: the ingress routing mesh is off")
        return self._mesh_allowed

    async def _underlay_dev(self, address: str) -> str | None:
        out = await overlay.ipn(self._netns, "-j", "-4", "addr", "show")
        for link in json.loads(out or "[]"):
            if any(a.get("local") == address for a in link.get("addr_info", [])):
                return str(link["ifname"])
        return None

    async def _program_mesh(self, state: NetworkState) -> None:
        plan = ns.ingress_plan(state)
        if plan is None or not state.ingress_addr or not await self.mesh_allowed():
            if self._mesh is not None:
                await mesh.clear_ingress(self._mesh.dev, self._mesh.vni, netns=self._netns)
                self._mesh = None
            return
        dev = await self._underlay_dev(state.node_addr)
        if dev is None:
            log.warning("no interface has the underlay address %s: no routing mesh", state.node_addr)
            return
        key = (plan.ports, sorted(plan.backends.items()), state.node_addr, dev, plan.network.vni)
        if self._mesh is not None and self._mesh.key == key:
            return
        if self._mesh is not None and (self._mesh.dev, self._mesh.vni) != (dev, plan.network.vni):
            await mesh.clear_ingress(self._mesh.dev, self._mesh.vni, netns=self._netns)
        await mesh.program_ingress(plan.ports, plan.backends, underlay_ip=state.node_addr,
                                   underlay_dev=dev, ingress_vni=plan.network.vni, netns=self._netns)
        self._mesh = _Mesh(plan.network.vni, dev, key)

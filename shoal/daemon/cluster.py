"""ClusterControl: the daemon's SwarmControl (api/services.py) — init, join, leave, restart.

The API server calls `init`/`join`/`leave`/`rotate_join_tokens`; shoal.daemon.main calls
`resume()` at start and `stop()` at shutdown. A manager runs daemon/managerside.py (the Manager,
the cluster port with mutual TLS, its own agent over a socket pair); a worker runs
daemon/worker.py (its agent over a TLS session to a manager, certificate renewal). Membership is
recorded in `D/node.json` (daemon/membership.py), certificates under `D/certificates`.

A refused join changes nothing here: the identity and node.json are written only after the
manager issued a certificate, and are removed again if starting the worker fails.
"""

from __future__ import annotations

import asyncio
import logging
import shutil
import ssl
from collections.abc import Callable
from pathlib import Path
from typing import Any

import msgspec

from shoal.agent.exec.crun import CrunExecutor
from shoal.agent.identity import JoinError, NodeIdentity
from shoal.agent.identity import join as join_cluster
from shoal.agent.network.host import HostNetwork
from shoal.api.clock import Clock
from shoal.api.defaults import initial_swarm_spec
from shoal.api.errors import ALREADY_IN_SWARM, LEAVE_LAST_MANAGER, InvalidArgument, Unavailable
from shoal.api.ids import new_id
from shoal.api.services import LocalNode, LogSource
from shoal.api.types import Cluster, ManagerStatus, Node, NodeDescription, SwarmSpec
from shoal.daemon import membership as mb
from shoal.daemon.managerside import ManagerRuntime
from shoal.daemon.worker import WorkerRuntime
from shoal.manager.bootstrap import bootstrap_cluster
from shoal.manager.ca import init_cluster_ca, rotate_join_tokens
from shoal.manager.ca.authority import RootCA
from shoal.store.protocol import Store, WriteTx

log = logging.getLogger(__name__)

_ZERO: tuple[Any, ...] = (None, 0, "", {}, [])
NOT_IN_SWARM_LEAVE = "This node is not part of a swarm"


def _overlay(base: Any, top: Any) -> Any:
    if isinstance(base, dict) and isinstance(top, dict):
        out = dict(base)
        for key, value in top.items():
            out[key] = _overlay(base.get(key), value)
        return out
    return base if any(top is z or top == z for z in _ZERO) and not isinstance(top, bool) else top


def merge_spec(base: SwarmSpec, overrides: dict[str, Any]) -> SwarmSpec:
    """The initial spec with every non-zero field of the request's Spec laid over it: the CLI
    sends a zero-filled spec for the flags the user did not set."""
    return msgspec.convert(_overlay(msgspec.to_builtins(base), overrides), SwarmSpec)


class ClusterControl:
    def __init__(self, *, store: Store, executor: CrunExecutor, clock: Clock, state_dir: Path,
                 description: Callable[[], NodeDescription], listen_addr: str = "0.0.0.0:2377",
                 advertise_addr: str = "", logs: LogSource | None = None,
                 network: HostNetwork | None = None) -> None:
        self._store = store
        self._network = network
        self._executor = executor
        self._clock = clock
        self._state_dir = state_dir
        self._description = description
        self._listen_addr = listen_addr
        self._advertise_addr = advertise_addr
        self._node_file = state_dir / "node.json"
        self._certs = state_dir / "certificates"
        self._lock = asyncio.Lock()
        self._membership = mb.load(self._node_file)
        self._logs = logs
        self._manager = ManagerRuntime(store=store, executor=executor, clock=clock, state_dir=state_dir,
                                       description=description, logs=logs, network=network)
        self._worker: WorkerRuntime | None = None

    # ------------------------------------------------------------------------------ membership
    def _has_cluster(self) -> bool:
        return any(True for _ in self._store.view().list(Cluster))

    def local_node(self) -> LocalNode | None:
        m = self._membership
        if m is None:
            return None
        if m.role == "worker":
            return LocalNode(node_id=m.node_id, role="worker", addr=m.addr, managers=list(m.managers))
        if not self._has_cluster():
            return None
        return LocalNode(node_id=m.node_id, role="manager", addr=m.addr, managers=list(m.managers))

    def local_node_id(self) -> str | None:
        node = self.local_node()
        return node.node_id if node is not None else None

    def cluster_log_source(self) -> LogSource | None:
        """Where `service logs` reads on a manager: every node's agent, over its session."""
        return self._manager.log_source()

    def cluster_port(self) -> int | None:
        """The port the cluster port is bound to, on a running manager."""
        return self._manager.port

    # --------------------------------------------------------------------------------- start
    async def resume(self) -> None:
        """At daemon start: a node that was in a swarm starts its manager or its worker again."""
        async with self._lock:
            node = self.local_node()
            if node is None:
                return
            if node.role == "worker":
                await self._start_worker(node.managers)
                return
            assert self._membership is not None
            # Loads the CA (or makes one for a data root of issue 2, whose cluster predates it).
            root = await init_cluster_ca(self._store, data_root=self._state_dir)
            await self._start_manager(self._membership, root)

    async def _start_manager(self, m: mb.Membership, root: RootCA) -> None:
        listen = m.listen or f"{mb.advertised('', self._listen_addr, self._advertise_addr)}:" \
            f"{mb.cluster_port(self._listen_addr)}"
        host, port = mb.split_host_port(listen)
        self._set_fallback_addr(m.addr or host)
        cluster_id = m.cluster_id or next(iter(self._store.view().list(Cluster))).id
        await self._manager.start(node_id=m.node_id, cluster_id=cluster_id, root=root, host=host,
                                  port=mb.CLUSTER_PORT if port is None else port)

    def _set_fallback_addr(self, addr: str) -> None:
        """The underlay address overlays use until the manager's first NetworkState says."""
        if self._network is not None and addr:
            self._network.fallback_addr = addr

    async def _start_worker(self, managers: list[str]) -> None:
        self._set_fallback_addr(self._membership.addr if self._membership else "")
        self._worker = WorkerRuntime(executor=self._executor, clock=self._clock, state_dir=self._state_dir,
                                     identity_dir=self._certs, description=self._description,
                                     managers=managers, logs=self._logs, network=self._network)
        await self._worker.start()

    # ---------------------------------------------------------------------------------- init
    async def init(self, advertise_addr: str, listen_addr: str, spec_overrides: dict[str, object]) -> str:
        async with self._lock:
            if self.local_node() is not None:
                raise Unavailable(ALREADY_IN_SWARM)
            listen = mb.effective_listen(listen_addr, self._listen_addr)
            try:
                host = mb.advertised(advertise_addr, listen, self._advertise_addr)
                port = mb.cluster_port(listen)
            except ValueError as e:
                raise InvalidArgument(str(e)) from None
            node_id = self._membership.node_id if self._membership else new_id()
            spec = merge_spec(initial_swarm_spec(), dict(spec_overrides))
            await self._executor.setup()
            cluster = await bootstrap_cluster(self._store, node_id=node_id, description=self._description(),
                                              addr=host, spec=spec, now=self._clock.now())
            try:
                await self._init_manager(node_id, cluster.id, host, port)
            except BaseException:
                await self._undo_init()
                raise
            log.info("swarm initialised; node %s, cluster port %s:%s", node_id, host, self._manager.port)
            return node_id

    async def _init_manager(self, node_id: str, cluster_id: str, host: str, port: int) -> None:
        root = await init_cluster_ca(self._store, data_root=self._state_dir)
        m = mb.Membership(node_id=node_id, role="manager", addr=host, cluster_id=cluster_id,
                          managers=[f"{host}:{port}"], listen=f"{host}:{port}")
        try:
            await self._start_manager(m, root)
        except OSError as e:
            raise InvalidArgument(f"cannot listen on {host}:{port} for the cluster port: "
                                  f"{e.strerror or e}") from None
        bound = f"{host}:{self._manager.port}"
        m = msgspec.structs.replace(m, managers=[bound], listen=bound)
        await self._set_manager_addr(node_id, bound)
        mb.save(self._node_file, m)
        self._membership = m

    async def _set_manager_addr(self, node_id: str, addr: str) -> None:
        """ManagerStatus.Addr is what `swarm init`/`join-token` print after `docker swarm join`."""
        def apply(tx: WriteTx) -> None:
            node = tx.get(Node, node_id)
            if node is not None:
                status = node.manager_status or ManagerStatus(leader=True, reachability="reachable")
                tx.update(msgspec.structs.replace(
                    node, manager_status=msgspec.structs.replace(status, addr=addr)))

        await self._store.update(apply)

    async def _undo_init(self) -> None:
        await self._manager.stop(shutdown_tasks=True)
        await self._store.wipe()
        shutil.rmtree(self._certs, ignore_errors=True)
        mb.clear(self._node_file)
        self._membership = None

    # ---------------------------------------------------------------------------------- join
    async def join(self, remote_addrs: list[str], token: str, advertise_addr: str, listen_addr: str) -> None:
        async with self._lock:
            if self.local_node() is not None or self._has_cluster():
                raise Unavailable(ALREADY_IN_SWARM)
            try:
                addrs = [mb.join_addr(a) for a in remote_addrs]
                host = mb.advertised(advertise_addr, mb.effective_listen(listen_addr, self._listen_addr),
                                     self._advertise_addr)
            except ValueError as e:
                raise InvalidArgument(str(e)) from None
            addr, identity = await self._request_identity(addrs, token, host)
            if identity.role != "worker":
                raise InvalidArgument("joining as a manager is not supported until high availability "
                                      "lands: use the worker join token")
            m = mb.Membership(node_id=identity.node_id, role="worker", addr=host, managers=[addr],
                              cluster_id=identity.cluster_id)
            try:
                identity.save(self._certs)
                mb.save(self._node_file, m)
                self._membership = m
                await self._executor.setup()
                await self._start_worker([addr])
            except BaseException:
                await self._forget_worker()
                raise
            log.info("joined the swarm at %s as worker %s", addr, identity.node_id)

    async def _request_identity(self, addrs: list[str], token: str, host: str) -> tuple[str, NodeIdentity]:
        """Ask each manager address in turn; a refusal (bad token...) is final, an unreachable
        manager moves on to the next."""
        hostname = self._description().hostname
        last: JoinError | None = None
        for addr in addrs:
            try:
                return addr, await join_cluster(addr, token, hostname=hostname, advertise_addr=host)
            except JoinError as e:
                last = e
                if not _is_unreachable(e):
                    raise InvalidArgument(str(e)) from None
        raise Unavailable(str(last) if last else "no manager address to join")

    async def _forget_worker(self) -> None:
        if self._worker is not None:
            await self._worker.stop(shutdown_tasks=True)
            self._worker = None
        shutil.rmtree(self._certs, ignore_errors=True)
        mb.clear(self._node_file)
        self._membership = None

    # --------------------------------------------------------------------------------- leave
    async def leave(self, force: bool) -> None:
        async with self._lock:
            node = self.local_node()
            if node is None:
                raise Unavailable(NOT_IN_SWARM_LEAVE)
            if node.role == "worker":
                await self._forget_worker()
            else:
                if not force:
                    # The only manager is always the last one until high availability lands.
                    raise Unavailable(LEAVE_LAST_MANAGER)
                await self._manager.stop(shutdown_tasks=True)
                await self._store.wipe()
                shutil.rmtree(self._certs, ignore_errors=True)
                mb.clear(self._node_file)
                self._membership = None
            await self._executor.teardown(remove_bridge=True)
            log.info("left the swarm")

    async def rotate_join_tokens(self, *, worker: bool, manager: bool) -> None:
        root = self._manager.root
        if root is None:
            raise Unavailable("the manager is not running")
        await rotate_join_tokens(self._store, root, worker=worker, manager=manager)

    async def stop(self) -> None:
        """Daemon shutdown: containers keep running so that the next start adopts them."""
        async with self._lock:
            await self._manager.stop(shutdown_tasks=False)
            if self._worker is not None:
                await self._worker.stop(shutdown_tasks=False)
                self._worker = None


def _is_unreachable(error: JoinError) -> bool:
    """Whether the manager could not be reached (try the next one) rather than said no."""
    return isinstance(error.__cause__ or error.__context__, OSError | TimeoutError) \
        and not isinstance(error.__cause__ or error.__context__, ssl.SSLError)

"""The cluster port (2377): the TLS server remote nodes join through and hold sessions on.

Started and stopped by the daemon on a manager, with the root CA from `init_cluster_ca` and the
dispatcher's `serve` as `dispatcher_serve`. The first frame of each connection decides what it is
(flow in shoal/api/protocol.py):

  GetRootCA         -> RootCA (no client certificate needed: the node pins it by its token)
  IssueCertificate  -> join: check the token, refuse the manager role (no HA yet), sign the CSR and
                       create the worker's Node in one transaction -> IssuedCertificate
  RenewCertificate  -> needs this cluster's certificate of a node still in the store -> re-signed
  Register          -> needs the same; the connection is handed to the dispatcher
Every refusal is a SessionError with the reason, and writes nothing.
"""

from __future__ import annotations

import asyncio
import asyncio.sslproto
import contextlib
import logging
import ssl
from collections.abc import Awaitable, Callable

import msgspec

from shoal.api import protocol, tls
from shoal.api.clock import Clock
from shoal.api.defaults import NODE_CERT_EXPIRY_NS
from shoal.api.errors import InvalidArgument
from shoal.api.ids import new_id
from shoal.api.protocol import (
    GetRootCA,
    IssueCertificate,
    IssuedCertificate,
    Message,
    Register,
    RenewCertificate,
    SessionError,
)
from shoal.api.protocol import RootCA as RootCAMessage
from shoal.api.types import Cluster, Node, NodeDescription, NodeSpec, NodeStatus
from shoal.manager.ca.authority import RootCA
from shoal.manager.ca.tokens import role_for_token
from shoal.store.protocol import ReadTx, Store, WriteTx

log = logging.getLogger(__name__)

# asyncio gives every TLS connection a 256 KiB read buffer, zero-filled up front: with 1,000 agent
# sessions that alone is ~240 MiB of manager RSS (bench/bench_hollow.py: 506 -> 271 MiB at 1,000
# hosts / 100k tasks). Session frames are small, so 16 KiB suffices. `max_size` is an asyncio
# internal, hence the guard: on a Python without it nothing changes.
if hasattr(asyncio.sslproto.SSLProtocol, "max_size"):
    asyncio.sslproto.SSLProtocol.max_size = 16 * 1024

DispatcherServe = Callable[..., Awaitable[None]]

FIRST_FRAME_TIMEOUT_S = 10.0
REFRESH_CHECK_S = 60.0  # how often the server's own certificate is checked for re-issue
CERT_REQUIRED = "a node certificate signed by this cluster's CA is required"
MANAGER_JOIN_REFUSED = ("joining as a manager is not supported until high availability lands "
                        "(use the worker token)")
_READ_ERRORS = (asyncio.IncompleteReadError, ConnectionError, ValueError, msgspec.DecodeError,
                ssl.SSLError, TimeoutError)


def node_cert_expiry_s(view: ReadTx) -> float:
    """The cluster's node certificate lifetime (Spec.CAConfig.NodeCertExpiry) in seconds."""
    for cluster in view.list(Cluster):
        if cluster.spec.ca_config.node_cert_expiry > 0:
            return cluster.spec.ca_config.node_cert_expiry / 1e9
    return NODE_CERT_EXPIRY_NS / 1e9


def removed_message(node_id: str) -> str:
    return f"node {node_id} is not a member of this swarm (it was removed); it must join again"


class Refused(Exception):
    """A request this server answers with a SessionError and nothing else."""


class ClusterPortServer:
    """Component (start/stop). `port` is the bound port once started (port 0 picks one)."""

    def __init__(self, store: Store, root: RootCA, dispatcher_serve: DispatcherServe, *, host: str,
                 port: int, clock: Clock, manager_node_id: str | None = None,
                 cluster_id: str | None = None) -> None:
        self._store, self._root, self._serve = store, root, dispatcher_serve
        self._host, self._port, self._clock = host, port, clock
        self._manager_node_id, self._cluster_id = manager_node_id, cluster_id
        self._server: asyncio.Server | None = None
        self._context: ssl.SSLContext | None = None
        self._refresher: asyncio.Task[None] | None = None
        self._server_cert_issued = (0.0, 0.0)  # (monotonic time, lifetime in s) of the server cert
        self._pending: dict[asyncio.Task[object], asyncio.StreamWriter] = {}

    @property
    def port(self) -> int:
        if self._server is None or not self._server.sockets:
            return self._port
        port: int = self._server.sockets[0].getsockname()[1]
        return port

    @property
    def cluster_id(self) -> str:
        if self._cluster_id is None:
            self._cluster_id = next(iter(self._store.view().list(Cluster))).id
        return self._cluster_id

    @property
    def manager_node_id(self) -> str:
        if self._manager_node_id is None:
            managers = [n.id for n in self._store.view().list(Node) if n.spec.role == "manager"]
            self._manager_node_id = sorted(managers)[0]
        return self._manager_node_id

    # ------------------------------------------------------------------------------ lifecycle
    async def start(self) -> None:
        cert_pem, key_pem = self._issue_server_cert()
        self._context = tls.server_context(cert_pem, key_pem, self._root.cert_pem)
        self._server = await asyncio.start_server(
            self._handle, self._host, self._port, ssl=self._context,
            ssl_handshake_timeout=FIRST_FRAME_TIMEOUT_S)
        self._refresher = asyncio.create_task(self._refresh_loop(), name="clusterport-cert")
        log.info("cluster port listening on %s:%d", self._host, self.port)

    async def stop(self) -> None:
        if self._refresher is not None:
            self._refresher.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._refresher
            self._refresher = None
        if self._server is not None:
            self._server.close()
            await self._server.wait_closed()
            self._server = None
        # Connections still in their first frame end here; handed-off sessions are the dispatcher's.
        for task, writer in list(self._pending.items()):
            writer.close()
            task.cancel()
        for task in list(self._pending):
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await task

    def _issue_server_cert(self) -> tuple[str, str]:
        lifetime_s = node_cert_expiry_s(self._store.view())
        self._server_cert_issued = (self._clock.monotonic(), lifetime_s)
        return self._root.issue_self(self.manager_node_id, "manager", self.cluster_id, lifetime_s)

    async def _refresh_loop(self) -> None:
        """Re-issue the server's own certificate at half its life, or at once when the cluster's
        expiry setting changed (`swarm update --cert-expiry`). New connections get the new one
        (OpenSSL copies the certificate into each connection as it starts)."""
        while True:
            issued_at, lifetime_s = self._server_cert_issued
            await self._clock.sleep(min(lifetime_s / 2, REFRESH_CHECK_S))
            half_life_passed = self._clock.monotonic() - issued_at >= lifetime_s / 2
            if half_life_passed or node_cert_expiry_s(self._store.view()) != lifetime_s:
                cert_pem, key_pem = self._issue_server_cert()
                assert self._context is not None
                tls.load_chain(self._context, cert_pem, key_pem)

    # ---------------------------------------------------------------------------- connections
    async def _handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        task: asyncio.Task[object] | None = asyncio.current_task()
        if task is not None:
            self._pending[task] = writer
        handed_off = False
        try:
            try:
                first = await asyncio.wait_for(protocol.read_message(reader), FIRST_FRAME_TIMEOUT_S)
            except _READ_ERRORS as exc:
                log.debug("cluster port: no valid first frame: %r", exc)
                return
            peer = tls.peer_identity(writer.get_extra_info("ssl_object"))
            if isinstance(first, Register) and self._may_register(peer):
                assert peer is not None
                handed_off = True
                if task is not None:
                    self._pending.pop(task, None)
                await self._serve(reader, writer, first=first, peer_node_id=peer.node_id)
                return
            reply = await self._answer(first, peer, writer)
            with contextlib.suppress(*_READ_ERRORS):
                await protocol.write_message(writer, reply)
        finally:
            if task is not None:
                self._pending.pop(task, None)
            if not handed_off:
                writer.close()
                with contextlib.suppress(Exception):
                    await writer.wait_closed()

    def _may_register(self, peer: tls.PeerIdentity | None) -> bool:
        return (peer is not None and peer.cluster_id == self.cluster_id
                and self._store.view().get(Node, peer.node_id) is not None)

    async def _answer(self, first: Message, peer: tls.PeerIdentity | None,
                      writer: asyncio.StreamWriter) -> Message:
        try:
            if isinstance(first, GetRootCA):
                return RootCAMessage(cert_pem=self._root.cert_pem)
            if isinstance(first, IssueCertificate):
                return await self._join(first, _peer_host(writer))
            if isinstance(first, RenewCertificate):
                return self._renew(first, peer)
            if isinstance(first, Register) and peer is not None and peer.cluster_id == self.cluster_id:
                raise Refused(removed_message(peer.node_id))
            raise Refused(CERT_REQUIRED)
        except (Refused, InvalidArgument) as exc:
            message = exc.message if isinstance(exc, InvalidArgument) else str(exc)
            log.info("cluster port refused a %s: %s", type(first).__name__, message)
            return SessionError(message=message)

    # ------------------------------------------------------------------------------- requests
    async def _join(self, msg: IssueCertificate, peer_host: str) -> IssuedCertificate:
        cluster = self._cluster(self._store.view())
        role = role_for_token(msg.token, cluster.join_tokens)
        if role == "manager":
            raise Refused(MANAGER_JOIN_REFUSED)
        node_id = new_id()
        # Signed before the transaction: a bad CSR is refused with nothing written, and the
        # certificate is never sent unless the node object was committed.
        cert_pem = self._sign(msg.csr_pem, node_id, role, node_cert_expiry_s(self._store.view()))
        node = Node(
            id=node_id,
            spec=NodeSpec(role=role, availability="active"),
            description=NodeDescription(hostname=msg.hostname),
            status=NodeStatus(state="unknown", addr=msg.addr or peer_host),
        )

        def create(tx: WriteTx) -> None:
            # Checked again inside the transaction: a rotation since the read wins.
            if role_for_token(msg.token, self._cluster(tx).join_tokens) != role:
                raise Refused("join token changed while joining")
            tx.create(node)

        await self._store.update(create)
        log.info("node %s (%s) joined as a %s", node_id, msg.hostname, role)
        return IssuedCertificate(node_id=node_id, role=role, cert_pem=cert_pem, root_pem=self._root.cert_pem)

    def _renew(self, msg: RenewCertificate, peer: tls.PeerIdentity | None) -> IssuedCertificate:
        if peer is None or peer.cluster_id != self.cluster_id:
            raise Refused(CERT_REQUIRED)
        view = self._store.view()
        node = view.get(Node, peer.node_id)
        if node is None:
            raise Refused(removed_message(peer.node_id))
        # The store's role is authoritative (a demotion must not survive in a renewed certificate).
        role = node.spec.role if node.spec.role in tls.ROLES else peer.role
        cert_pem = self._sign(msg.csr_pem, node.id, role, node_cert_expiry_s(view))
        return IssuedCertificate(node_id=node.id, role=role, cert_pem=cert_pem, root_pem=self._root.cert_pem)

    def _sign(self, csr_pem: str, node_id: str, role: str, expiry_s: float) -> str:
        try:
            return self._root.sign(csr_pem, node_id=node_id, role=role, cluster_id=self.cluster_id,
                                   expiry_s=expiry_s)
        except ValueError as exc:
            raise Refused(str(exc)) from None

    def _cluster(self, view: ReadTx) -> Cluster:
        for cluster in view.list(Cluster):
            return cluster
        raise Refused("this node is not part of a swarm")


def _peer_host(writer: asyncio.StreamWriter) -> str:
    peername = writer.get_extra_info("peername")
    return str(peername[0]) if isinstance(peername, tuple) and peername else ""

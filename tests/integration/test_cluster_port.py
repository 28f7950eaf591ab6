"""The cluster port over 127.0.0.1: joins, refusals, mutual TLS sessions and certificate renewal,
against a real SqliteStore(":memory:"), the real CA and the real Dispatcher. No root needed."""

from __future__ import annotations

import asyncio
import contextlib
import ssl
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from shoal.agent.identity import (
    CertificateRenewer,
    JoinError,
    NodeIdentity,
    fetch_root_ca,
    join,
    open_session,
    renew,
)
from shoal.api import tls
from shoal.api.clock import SystemClock
from shoal.api.protocol import (
    IssueCertificate,
    Message,
    Register,
    Registered,
    SessionError,
    read_message,
    write_message,
)
from shoal.api.types import CAConfig, Cluster, Node, NodeDescription, SwarmSpec
from shoal.manager.bootstrap import bootstrap_cluster
from shoal.manager.ca import init_cluster_ca, rotate_join_tokens
from shoal.manager.ca.authority import RootCA
from shoal.manager.clusterport import CERT_REQUIRED, MANAGER_JOIN_REFUSED, ClusterPortServer
from shoal.manager.dispatcher.dispatcher import Dispatcher
from shoal.store.sqlite import SqliteStore

MANAGER_ID = "m" * 25
DEADLINE_S = 15.0


@dataclass
class Harness:
    store: SqliteStore
    root: RootCA
    server: ClusterPortServer
    first_frames: list[str] = field(default_factory=list)  # what the server was asked, in order

    @property
    def addr(self) -> str:
        return f"127.0.0.1:{self.server.port}"

    @property
    def cluster(self) -> Cluster:
        return next(iter(self.store.view().list(Cluster)))

    def nodes(self) -> list[Node]:
        return list(self.store.view().list(Node))


@contextlib.asynccontextmanager
async def harness(tmp_path: Path, *, expiry_ns: int = 0) -> AsyncIterator[Harness]:
    clock = SystemClock()
    store = SqliteStore(":memory:")
    await store.open()
    await bootstrap_cluster(store, node_id=MANAGER_ID, description=NodeDescription(hostname="mgr"),
                            addr="127.0.0.1", spec=SwarmSpec(ca_config=CAConfig(node_cert_expiry=expiry_ns)),
                            now=clock.now())
    root = await init_cluster_ca(store, data_root=tmp_path / "manager")
    dispatcher = Dispatcher(store, clock)
    await dispatcher.start()
    server = ClusterPortServer(store, root, dispatcher.serve, host="127.0.0.1", port=0, clock=clock,
                               manager_node_id=MANAGER_ID)
    h = Harness(store, root, server)
    answer = server._answer  # spy on the frames the server answers (joins, renewals, refusals)

    async def spy(first: Message, peer: tls.PeerIdentity | None, writer: asyncio.StreamWriter) -> Message:
        h.first_frames.append(type(first).__name__)
        return await answer(first, peer, writer)

    server._answer = spy  # type: ignore[method-assign]
    await server.start()
    try:
        yield h
    finally:
        await server.stop()
        await dispatcher.stop()
        await store.close()


def run(tmp_path: Path, body: Callable[[Harness], Awaitable[None]], *, expiry_ns: int = 0) -> None:
    async def main() -> None:
        async with harness(tmp_path, expiry_ns=expiry_ns) as h:
            await asyncio.wait_for(body(h), DEADLINE_S)

    asyncio.run(main())


async def request(h: Harness, ctx: ssl.SSLContext, message: Message) -> Message:
    reader, writer = await asyncio.open_connection("127.0.0.1", h.server.port, ssl=ctx)
    try:
        await write_message(writer, message)
        return await read_message(reader)
    finally:
        writer.close()


async def assert_join_refused(h: Harness, token: str, message: str) -> None:
    before = (h.store.revision, len(h.nodes()))
    with pytest.raises(JoinError, match=message):
        await join(h.addr, token, hostname="w")
    assert (h.store.revision, len(h.nodes())) == before


def csr_pem() -> str:
    from shoal.agent.identity import _new_key_and_csr
    return _new_key_and_csr()[1]


# ------------------------------------------------------------------------------------------ join
def test_worker_join_creates_the_node(tmp_path: Path) -> None:
    async def body(h: Harness) -> None:
        identity = await join(h.addr, h.cluster.join_tokens.worker, hostname="w1", advertise_addr="127.0.0.1")
        assert (identity.role, identity.cluster_id) == ("worker", h.cluster.id)
        assert identity.root_pem == h.root.cert_pem
        node = h.store.view().get(Node, identity.node_id)
        assert node is not None
        assert (node.spec.role, node.spec.availability) == ("worker", "active")
        assert node.description.hostname == "w1"
        assert (node.status.state, node.status.addr) == ("unknown", "127.0.0.1")
        assert h.first_frames == ["GetRootCA", "IssueCertificate"]
        identity.save(tmp_path / "node")
        assert NodeIdentity.load(tmp_path / "node") == identity
        assert (tmp_path / "node" / "node.key").stat().st_mode & 0o777 == 0o600

    run(tmp_path, body)


def test_wrong_digest_is_refused_before_anything_is_sent(tmp_path: Path) -> None:
    async def body(h: Harness) -> None:
        good = tls.parse_join_token(h.cluster.join_tokens.worker)
        other = tls.ca_digest(RootCA.create("other").cert_pem)
        token = tls.format_join_token(other, good.secret)
        await assert_join_refused(h, token, f"remote CA does not match fingerprint. Expected: {other}")
        assert h.first_frames == ["GetRootCA"]  # the token never left the node

    run(tmp_path, body)


def test_bad_tokens_are_refused_and_change_nothing(tmp_path: Path) -> None:
    async def body(h: Harness) -> None:
        tokens = h.cluster.join_tokens
        digest = tls.parse_join_token(tokens.worker).digest
        unknown = tls.format_join_token(digest, "0" * 25)
        await assert_join_refused(h, unknown, "A valid join token is necessary to join this cluster")
        await assert_join_refused(h, "SWMTKN-1-nope", "invalid join token")
        await rotate_join_tokens(h.store, h.root, worker=True, manager=False)
        assert h.cluster.join_tokens.worker != tokens.worker
        await assert_join_refused(h, tokens.worker, "A valid join token is necessary to join this cluster")
        # The server refuses a malformed token itself too (a client that skipped its own check).
        reply = await request(h, tls.client_context(h.root.cert_pem),
                              IssueCertificate(csr_pem=csr_pem(), token="SWMTKN-1-x", hostname="w"))
        assert reply == SessionError(message="invalid join token")
        assert len(h.nodes()) == 1

    run(tmp_path, body)


def test_manager_token_is_refused(tmp_path: Path) -> None:
    async def body(h: Harness) -> None:
        await assert_join_refused(h, h.cluster.join_tokens.manager, MANAGER_JOIN_REFUSED.split(" (")[0])

    run(tmp_path, body)


def test_fetch_root_ca_pins_the_token_digest(tmp_path: Path) -> None:
    async def body(h: Harness) -> None:
        assert await fetch_root_ca(h.addr, h.cluster.join_tokens.worker) == h.root.cert_pem

    run(tmp_path, body)


# -------------------------------------------------------------------------------------- sessions
def register_for(identity: NodeIdentity) -> Register:
    return Register(node_id=identity.node_id, description=NodeDescription(hostname="w1"), addr="127.0.0.1")


def test_register_without_a_certificate_is_refused(tmp_path: Path) -> None:
    async def body(h: Harness) -> None:
        identity = await join(h.addr, h.cluster.join_tokens.worker, hostname="w1")
        reply = await request(h, tls.client_context(h.root.cert_pem), register_for(identity))
        assert reply == SessionError(message=CERT_REQUIRED)
        node = h.store.view().get(Node, identity.node_id)
        assert node is not None and node.status.state == "unknown"

    run(tmp_path, body)


def test_certificate_of_another_cluster_is_refused(tmp_path: Path) -> None:
    async def body(h: Harness) -> None:
        identity = await join(h.addr, h.cluster.join_tokens.worker, hostname="w1")
        foreign = RootCA.create("other")
        cert_pem, key_pem = foreign.issue_self(identity.node_id, "worker", h.cluster.id, 60)
        ctx = tls.client_context(h.root.cert_pem, cert_pem, key_pem)
        with pytest.raises((ssl.SSLError, ConnectionError, asyncio.IncompleteReadError)):
            await request(h, ctx, register_for(identity))

    run(tmp_path, body)


def test_register_with_a_certificate_reaches_the_dispatcher(tmp_path: Path) -> None:
    async def body(h: Harness) -> None:
        identity = await join(h.addr, h.cluster.join_tokens.worker, hostname="w1")
        reader, writer = await open_session(h.addr, identity)
        try:
            await write_message(writer, register_for(identity))
            reply = await read_message(reader)
            assert isinstance(reply, Registered) and reply.node_id == identity.node_id
            node = h.store.view().get(Node, identity.node_id)
            assert node is not None and node.status.state == "ready"
        finally:
            writer.close()

    run(tmp_path, body)


def test_removed_node_is_refused(tmp_path: Path) -> None:
    async def body(h: Harness) -> None:
        identity = await join(h.addr, h.cluster.join_tokens.worker, hostname="w1")
        await h.store.update(lambda tx: tx.delete(Node, identity.node_id))
        with pytest.raises(JoinError, match="removed"):
            await renew(h.addr, identity)
        reader, writer = await open_session(h.addr, identity)
        try:
            await write_message(writer, register_for(identity))
            reply = await read_message(reader)
            assert isinstance(reply, SessionError) and "removed" in reply.message
        finally:
            writer.close()

    run(tmp_path, body)


# --------------------------------------------------------------------------------------- renewal
def test_certificate_is_renewed_before_expiry(tmp_path: Path) -> None:
    async def body(h: Harness) -> None:
        identity = await join(h.addr, h.cluster.join_tokens.worker, hostname="w1")
        assert (identity.not_after - identity.not_before).total_seconds() < 70  # 4 s + 60 s backdating
        directory = tmp_path / "node"
        identity.save(directory)
        renewed: asyncio.Queue[NodeIdentity] = asyncio.Queue()
        renewer = CertificateRenewer(directory, lambda: h.addr, SystemClock(), on_renewed=renewed.put_nowait)
        await renewer.start()
        try:
            new = await asyncio.wait_for(renewed.get(), 10)
        finally:
            await renewer.stop()
        assert new.node_id == identity.node_id and new.role == "worker"
        assert new.not_after > identity.not_after
        assert new.key_pem != identity.key_pem
        assert NodeIdentity.load(directory) == new
        assert h.first_frames[-1] == "RenewCertificate"
        reader, writer = await open_session(h.addr, new)  # the renewed certificate is accepted
        try:
            await write_message(writer, register_for(new))
            assert isinstance(await read_message(reader), Registered)
        finally:
            writer.close()

    run(tmp_path, body, expiry_ns=4_000_000_000)


def test_init_cluster_ca_is_idempotent(tmp_path: Path) -> None:
    async def body(h: Harness) -> None:
        tokens, revision = h.cluster.join_tokens, h.store.revision
        assert h.cluster.tls_info is not None and h.cluster.tls_info["TrustRoot"] == h.root.cert_pem
        assert tls.parse_join_token(tokens.worker).digest == tls.ca_digest(h.root.cert_pem)
        again = await init_cluster_ca(h.store, data_root=tmp_path / "manager")
        assert again.cert_pem == h.root.cert_pem and again.key_pem == h.root.key_pem
        assert h.cluster.join_tokens == tokens  # a restart keeps the tokens nodes were given
        assert h.store.revision == revision

    run(tmp_path, body)


def test_server_certificate_is_reissued(tmp_path: Path) -> None:
    async def server_cert(h: Harness, identity: NodeIdentity) -> bytes:
        _, writer = await open_session(h.addr, identity)
        try:
            der = writer.get_extra_info("ssl_object").getpeercert(binary_form=True)
            assert isinstance(der, bytes)
            return der
        finally:
            writer.close()

    async def body(h: Harness) -> None:
        identity = await join(h.addr, h.cluster.join_tokens.worker, hostname="w1")
        first = await server_cert(h, identity)
        loop = asyncio.get_running_loop()
        deadline = loop.time() + 10
        while await server_cert(h, identity) == first:  # re-issued at half of its 4 s life
            assert loop.time() < deadline, "the server certificate was never re-issued"
            await asyncio.sleep(0.1)  # poll interval, not synchronisation: the loop checks a condition

    run(tmp_path, body, expiry_ns=4_000_000_000)

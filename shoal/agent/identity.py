"""A node's identity in a cluster (its certificate) and the client half of the cluster port.

Called by the daemon: `join` at `swarm join`, `NodeIdentity.load` at start, `open_session` for the
agent's dispatcher session, and `CertificateRenewer` to keep the certificate fresh.

`join` pins the manager's CA with the token's digest before it sends the token or anything else,
then reconnects with the CA verified and asks for a certificate (the manager picks the subject).
Every later connection is mutual TLS with that certificate.
"""

from __future__ import annotations

import asyncio
import contextlib
import datetime as dt
import inspect
import logging
import random
import ssl
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from pathlib import Path

import msgspec
from cryptography import x509
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from shoal.api import protocol, tls
from shoal.api.clock import Clock
from shoal.api.protocol import (
    GetRootCA,
    IssueCertificate,
    IssuedCertificate,
    Message,
    RenewCertificate,
    RootCA,
    SessionError,
)

log = logging.getLogger(__name__)

CERT_FILE, KEY_FILE, ROOT_FILE = "node.crt", "node.key", "root.crt"
RENEW_LOWER, RENEW_UPPER = 0.5, 0.8  # renew at a random point of the lifetime (swarmkit's range)
RETRY_MIN_S, RETRY_MAX_S = 1.0, 300.0
_IO_ERRORS = (OSError, asyncio.IncompleteReadError, TimeoutError, ValueError, msgspec.DecodeError)


class JoinError(Exception):
    """A join, renewal or session that the manager refused or that could not be made."""


@dataclass(frozen=True)
class NodeIdentity:
    node_id: str
    role: str
    cluster_id: str
    cert_pem: str
    key_pem: str
    root_pem: str

    @property
    def not_after(self) -> dt.datetime:
        return _cert(self.cert_pem).not_valid_after_utc

    @property
    def not_before(self) -> dt.datetime:
        return _cert(self.cert_pem).not_valid_before_utc

    def save(self, directory: Path) -> None:
        """root.crt, node.key (0600), then node.crt, each written atomically."""
        directory.mkdir(mode=0o700, parents=True, exist_ok=True)
        tls.write_private(directory / ROOT_FILE, self.root_pem, 0o644)
        tls.write_private(directory / KEY_FILE, self.key_pem, 0o600)
        tls.write_private(directory / CERT_FILE, self.cert_pem, 0o644)

    @classmethod
    def load(cls, directory: Path) -> NodeIdentity | None:
        """The identity saved in `directory`, or None if there is none or it is inconsistent (a key
        that is not the certificate's, e.g. after a crash between two writes)."""
        paths = [directory / name for name in (CERT_FILE, KEY_FILE, ROOT_FILE)]
        if not all(p.exists() for p in paths):
            return None
        cert_pem, key_pem, root_pem = (p.read_text() for p in paths)
        try:
            return from_certificate(cert_pem, key_pem, root_pem)
        except ValueError as exc:
            log.warning("node identity in %s is unusable: %s", directory, exc)
            return None


def from_certificate(cert_pem: str, key_pem: str, root_pem: str) -> NodeIdentity:
    """An identity whose node ID, role and cluster come from the certificate's subject; ValueError
    if the key is not the certificate's, the root did not sign it, or it is no node certificate."""
    cert, root = _cert(cert_pem), _cert(root_pem)
    key = serialization.load_pem_private_key(key_pem.encode(), password=None)
    if cert.public_key().public_bytes(*_SPKI) != key.public_key().public_bytes(*_SPKI):
        raise ValueError("the key does not match the certificate")
    try:
        cert.verify_directly_issued_by(root)
    except (ValueError, TypeError, InvalidSignature) as exc:
        raise ValueError(f"the certificate is not signed by the root CA: {exc}") from None

    def attr(oid: x509.ObjectIdentifier) -> str:
        values = cert.subject.get_attributes_for_oid(oid)
        return str(values[0].value) if values else ""

    role = attr(NameOID.ORGANIZATIONAL_UNIT_NAME).removeprefix(tls.ROLE_OU_PREFIX)
    node_id, cluster_id = attr(NameOID.COMMON_NAME), attr(NameOID.ORGANIZATION_NAME)
    if role not in tls.ROLES or not node_id or not cluster_id:
        raise ValueError("not a node certificate")
    return NodeIdentity(node_id, role, cluster_id, cert_pem, key_pem, root_pem)


_SPKI = (serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo)


def _cert(pem: str) -> x509.Certificate:
    return x509.load_pem_x509_certificate(pem.encode())


# ---------------------------------------------------------------------------------- connecting
def split_addr(addr: str) -> tuple[str, int]:
    """"host:port" or "[v6]:port" -> (host, port)."""
    host, sep, port = addr.rpartition(":")
    if not sep or not host or not port.isdigit():
        raise JoinError(f"invalid manager address {addr!r} (expected host:port)")
    return host.strip("[]"), int(port)


async def _connect(addr: str, ctx: ssl.SSLContext, timeout_s: float,
                   ) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
    host, port = split_addr(addr)
    try:
        return await asyncio.wait_for(
            asyncio.open_connection(host, port, ssl=ctx, ssl_handshake_timeout=timeout_s), timeout_s)
    except ssl.SSLError as exc:
        raise JoinError(f"TLS handshake with {addr} failed: {exc.reason or exc}") from None
    except (OSError, TimeoutError) as exc:
        raise JoinError(f"could not connect to the manager at {addr}: {exc or 'timed out'}") from None


async def _request(addr: str, ctx: ssl.SSLContext, message: Message, timeout_s: float) -> Message:
    """One request and its reply on a fresh connection."""
    reader, writer = await _connect(addr, ctx, timeout_s)
    try:
        await protocol.write_message(writer, message)
        return await asyncio.wait_for(protocol.read_message(reader), timeout_s)
    except ssl.SSLError as exc:  # TLS 1.3: a refused client certificate shows up on first read
        raise JoinError(f"the manager at {addr} refused the connection: {exc.reason or exc}") from None
    except _IO_ERRORS as exc:
        raise JoinError(f"no answer from the manager at {addr}: {exc!r}") from None
    finally:
        writer.close()
        with contextlib.suppress(Exception):
            await writer.wait_closed()


def _expect_issued(reply: Message) -> IssuedCertificate:
    if isinstance(reply, SessionError):
        raise JoinError(reply.message)
    if not isinstance(reply, IssuedCertificate):
        raise JoinError(f"unexpected answer from the manager: {type(reply).__name__}")
    return reply


def _new_key_and_csr() -> tuple[str, str]:
    key = ec.generate_private_key(ec.SECP256R1())
    # The subject is left empty: the manager decides it and ignores whatever a CSR says.
    csr = x509.CertificateSigningRequestBuilder().subject_name(x509.Name([])).sign(key, hashes.SHA256())
    key_pem = key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                serialization.NoEncryption()).decode()
    return key_pem, csr.public_bytes(serialization.Encoding.PEM).decode()


def _identity_from(reply: IssuedCertificate, key_pem: str, root_pem: str) -> NodeIdentity:
    try:
        identity = from_certificate(reply.cert_pem, key_pem, root_pem)
    except ValueError as exc:
        raise JoinError(f"the manager issued an unusable certificate: {exc}") from None
    if identity.node_id != reply.node_id:
        raise JoinError("the manager issued a certificate for another node")
    return identity


# ------------------------------------------------------------------------------------- joining
async def fetch_root_ca(addr: str, token: str, timeout_s: float = 10) -> str:
    """The manager's root CA, accepted only if its digest is the token's."""
    try:
        expected = tls.parse_join_token(token).digest
    except ValueError:
        raise JoinError("invalid join token") from None
    reply = await _request(addr, tls.client_context(None), GetRootCA(), timeout_s)
    if isinstance(reply, SessionError):
        raise JoinError(reply.message)
    if not isinstance(reply, RootCA):
        raise JoinError(f"unexpected answer from the manager: {type(reply).__name__}")
    try:
        digest = tls.ca_digest(reply.cert_pem)
    except ValueError:
        digest = ""
    if digest != expected:
        raise JoinError(f"remote CA does not match fingerprint. Expected: {expected}")
    return reply.cert_pem


async def join(addr: str, token: str, *, hostname: str, advertise_addr: str = "",
               timeout_s: float = 10) -> NodeIdentity:
    """Join the cluster at `addr` with `token`: the new node's identity (not saved)."""
    root_pem = await fetch_root_ca(addr, token, timeout_s)
    key_pem, csr_pem = _new_key_and_csr()
    request = IssueCertificate(csr_pem=csr_pem, token=token.strip(), hostname=hostname, addr=advertise_addr)
    reply = _expect_issued(await _request(addr, tls.client_context(root_pem), request, timeout_s))
    return _identity_from(reply, key_pem, root_pem)


async def renew(addr: str, identity: NodeIdentity, timeout_s: float = 10) -> NodeIdentity:
    """A new key and certificate for the same node, asked for with the current certificate."""
    key_pem, csr_pem = _new_key_and_csr()
    ctx = tls.client_context(identity.root_pem, identity.cert_pem, identity.key_pem)
    reply = _expect_issued(await _request(addr, ctx, RenewCertificate(csr_pem=csr_pem), timeout_s))
    renewed = _identity_from(reply, key_pem, identity.root_pem)
    if renewed.node_id != identity.node_id:
        raise JoinError("the manager renewed the certificate of another node")
    return renewed


async def open_session(addr: str, identity: NodeIdentity, timeout_s: float = 10,
                       ) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
    """A mutual-TLS stream to the manager for the dispatcher session (the caller sends Register).
    The server must hold a manager certificate of this node's cluster."""
    ctx = tls.client_context(identity.root_pem, identity.cert_pem, identity.key_pem)
    reader, writer = await _connect(addr, ctx, timeout_s)
    server = tls.peer_identity(writer.get_extra_info("ssl_object"))
    if server is None or server.role != "manager" or server.cluster_id != identity.cluster_id:
        writer.close()
        raise JoinError(f"{addr} is not a manager of cluster {identity.cluster_id}")
    return reader, writer


# ------------------------------------------------------------------------------------- renewal
def renewal_delay_s(identity: NodeIdentity, now: dt.datetime) -> float:
    """Seconds until a random point between 50% and 80% of the certificate's lifetime, measured
    from its issue (its start minus the backdating for clock skew)."""
    issued = min(identity.not_before + dt.timedelta(seconds=tls.BACKDATE_S), identity.not_after)
    lifetime = (identity.not_after - issued).total_seconds()
    at = issued + dt.timedelta(seconds=lifetime * random.uniform(RENEW_LOWER, RENEW_UPPER))
    return max(0.0, (at - now).total_seconds())


OnRenewed = Callable[[NodeIdentity], Awaitable[None] | None]


class CertificateRenewer:
    """Component (start/stop): renews the identity saved in `identity_dir` before it expires,
    retrying with exponential backoff, saves the new one and calls `on_renewed` with it."""

    def __init__(self, identity_dir: Path, addr_provider: Callable[[], str], clock: Clock,
                 on_renewed: OnRenewed | None = None) -> None:
        self._dir, self._addr, self._clock, self._on_renewed = identity_dir, addr_provider, clock, on_renewed
        self._task: asyncio.Task[None] | None = None

    async def start(self) -> None:
        if self._task is None:
            self._task = asyncio.create_task(self._run(), name="certificate-renewer")

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
            self._task = None

    async def _run(self) -> None:
        while True:
            identity = NodeIdentity.load(self._dir)
            if identity is None:
                log.warning("no node identity in %s: certificate renewal stopped", self._dir)
                return
            await self._clock.sleep(renewal_delay_s(identity, self._clock.now()))
            await self._renew_with_retries(identity)

    async def _renew_with_retries(self, identity: NodeIdentity) -> None:
        backoff = RETRY_MIN_S
        while True:
            try:
                renewed = await renew(self._addr(), identity)
                break
            except JoinError as exc:
                log.warning("certificate renewal failed (retrying in %.0f s): %s", backoff, exc)
            await self._clock.sleep(backoff * random.uniform(0.8, 1.2))  # jitter: no thundering herd
            backoff = min(backoff * 2, RETRY_MAX_S)
        renewed.save(self._dir)
        log.info("node certificate renewed; valid until %s", renewed.not_after.isoformat())
        if self._on_renewed is not None:
            result = self._on_renewed(renewed)
            if inspect.isawaitable(result):
                await result

"""TLS building blocks shared by the agent, the manager and the daemon: contexts, peer identity,
CA digests, join-token syntax and private PEM files.

Called by shoal/manager/clusterport.py (the server side of the cluster port), shoal/agent/identity.py
(joining, renewing, opening sessions), shoal/manager/ca/ (token making) and the daemon's wiring.

Identity is by CA and subject, as in swarmkit: a node certificate is signed by the cluster's root CA
and carries CN = node ID, OU = swarm-worker|swarm-manager, O = cluster ID. Hostnames are never
checked (nodes move, addresses are not names).
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import re
import ssl
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import NamedTuple

from cryptography import x509
from cryptography.hazmat.primitives.serialization import Encoding

TOKEN_PREFIX = "SWMTKN-1-"
DIGEST_LEN = 50  # sha256 in base36 fits in 50 characters (swarmkit's base36DigestLen)
SECRET_LEN = 25  # 128 random bits in base36 (swarmkit's maxGeneratedSecretLength)
BACKDATE_S = 60  # node certificates start this long before issue, for clock skew between hosts
ROLE_OU_PREFIX = "swarm-"
ROLES = ("worker", "manager")
_BASE36 = "0123456789abcdefghijklmnopqrstuvwxyz"
_TOKEN_RE = re.compile(rf"SWMTKN-1-([0-9a-z]{{{DIGEST_LEN}}})-([0-9a-z]{{{SECRET_LEN}}})")
# Where key material is written for the instant OpenSSL reads it: memory, when the host has it.
_SHM = Path("/dev/shm")


class PeerIdentity(NamedTuple):
    node_id: str
    role: str  # worker | manager
    cluster_id: str


class JoinToken(NamedTuple):
    digest: str  # base36 sha256 of the root CA certificate (DER)
    secret: str


# ------------------------------------------------------------------------------------ contexts
def server_context(cert_pem: str, key_pem: str, root_pem: str) -> ssl.SSLContext:
    """The cluster port's context: client certificates are optional (a joining node has none yet)
    but, when given, must be signed by `root_pem`."""
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    ctx.minimum_version = ssl.TLSVersion.TLSv1_2
    load_chain(ctx, cert_pem, key_pem)
    ctx.load_verify_locations(cadata=root_pem)
    ctx.verify_mode = ssl.CERT_OPTIONAL
    return ctx


def client_context(root_pem: str | None, cert_pem: str | None = None,
                   key_pem: str | None = None) -> ssl.SSLContext:
    """A node's context. `root_pem` None verifies nothing: only for GetRootCA, whose answer the
    node then checks against its join token's digest."""
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    ctx.minimum_version = ssl.TLSVersion.TLSv1_2
    ctx.check_hostname = False  # identity is the CA plus the subject, not a DNS name
    if root_pem is None:
        ctx.verify_mode = ssl.CERT_NONE
    else:
        ctx.load_verify_locations(cadata=root_pem)
        ctx.verify_mode = ssl.CERT_REQUIRED
    if cert_pem is not None and key_pem is not None:
        load_chain(ctx, cert_pem, key_pem)
    return ctx


def load_chain(ctx: ssl.SSLContext, cert_pem: str, key_pem: str) -> None:
    """Load a certificate and key into `ctx` (also to replace them on a live server context).

    OpenSSL's Python binding reads only files, so both go into a private 0700 directory that is
    removed before this returns: no key material is left behind."""
    with _private_dir() as tmp:
        cert_path, key_path = tmp / "cert.pem", tmp / "key.pem"
        write_private(cert_path, cert_pem, 0o600)
        write_private(key_path, key_pem, 0o600)
        ctx.load_cert_chain(cert_path, key_path)


@contextlib.contextmanager
def _private_dir() -> Iterator[Path]:
    base = str(_SHM) if _SHM.is_dir() and os.access(_SHM, os.W_OK) else None
    with tempfile.TemporaryDirectory(prefix="shoal-tls-", dir=base) as name:  # mkdtemp makes it 0700
        yield Path(name)


# ------------------------------------------------------------------------------------ identity
def peer_identity(ssl_object: ssl.SSLObject | ssl.SSLSocket | None) -> PeerIdentity | None:
    """The verified peer certificate's identity, or None (no certificate, unverified, or not a
    node certificate)."""
    if ssl_object is None:
        return None
    cert = ssl_object.getpeercert()
    if not cert:  # None: no certificate; {}: not verified (CERT_NONE)
        return None
    fields: dict[str, str] = {}
    for rdn in cert.get("subject", ()):
        for attribute in rdn:
            fields.setdefault(str(attribute[0]), str(attribute[1]))
    ou = fields.get("organizationalUnitName", "")
    role = ou.removeprefix(ROLE_OU_PREFIX)
    node_id, cluster_id = fields.get("commonName", ""), fields.get("organizationName", "")
    if not ou.startswith(ROLE_OU_PREFIX) or role not in ROLES or not node_id or not cluster_id:
        return None
    return PeerIdentity(node_id=node_id, role=role, cluster_id=cluster_id)


def ca_digest(root_pem: str) -> str:
    """sha256 of the root certificate's DER, in base36 zero-padded to 50 characters (swarmkit's
    join-token digest), so a joining node can pin the CA before it trusts anything."""
    der = x509.load_pem_x509_certificate(root_pem.encode()).public_bytes(Encoding.DER)
    return base36(int.from_bytes(hashlib.sha256(der).digest(), "big"), DIGEST_LEN)


def base36(n: int, width: int) -> str:
    out = []
    while n:
        n, r = divmod(n, 36)
        out.append(_BASE36[r])
    return "".join(reversed(out)).rjust(width, "0")


# ---------------------------------------------------------------------------------- join tokens
def parse_join_token(token: str) -> JoinToken:
    """`SWMTKN-1-<50 base36>-<25 base36>`; ValueError("invalid join token") for anything else."""
    match = _TOKEN_RE.fullmatch(token.strip())
    if match is None:
        raise ValueError("invalid join token")
    return JoinToken(digest=match.group(1), secret=match.group(2))


def format_join_token(digest: str, secret: str) -> str:
    return f"{TOKEN_PREFIX}{digest}-{secret}"


# ------------------------------------------------------------------------------------ PEM files
def write_private(path: Path, text: str, mode: int) -> None:
    """Write `text` to `path` atomically with `mode` (set at creation, so a key is never readable
    by others even for an instant): a temporary file in the same directory, fsync, rename."""
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    with contextlib.suppress(FileNotFoundError):
        tmp.unlink()
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, mode)
    try:
        with os.fdopen(fd, "w") as f:
            f.write(text)
            f.flush()
            os.fsync(f.fileno())
        os.chmod(tmp, mode)  # the umask may have narrowed it (0644 for certificates)
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            tmp.unlink()
        raise


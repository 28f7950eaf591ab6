"""The cluster's root certificate authority: made at `swarm init`, it signs node certificates.

Called by shoal/manager/ca/__init__.py (create or load it at init), shoal/manager/clusterport.py
(sign joining and renewing nodes, issue the manager's own server certificate) and the daemon.

As swarmkit: EC P-256 keys, a self-signed root "CN=swarm-ca" valid 20 years, and node certificates
whose subject the manager chooses (CN = node ID, OU = swarm-<role>, O = cluster ID) — never the
CSR, whose only use is to carry the node's public key.
"""

from __future__ import annotations

import base64
import datetime as dt
from pathlib import Path
from typing import Any

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from shoal.api.tls import BACKDATE_S, ROLE_OU_PREFIX, ROLES, write_private

ROOT_CN = "swarm-ca"
ROOT_VALIDITY = dt.timedelta(days=20 * 365)
CERT_FILE, KEY_FILE = "ca.crt", "ca.key"
_MIN_RSA_BITS = 2048


def new_key() -> ec.EllipticCurvePrivateKey:
    return ec.generate_private_key(ec.SECP256R1())


def key_to_pem(key: ec.EllipticCurvePrivateKey) -> str:
    return key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                             serialization.NoEncryption()).decode()


def cert_to_pem(cert: x509.Certificate) -> str:
    return cert.public_bytes(serialization.Encoding.PEM).decode()


def node_subject(node_id: str, role: str, cluster_id: str) -> x509.Name:
    if role not in ROLES:
        raise ValueError(f"unknown node role {role!r}")
    return x509.Name([
        x509.NameAttribute(NameOID.ORGANIZATION_NAME, cluster_id),
        x509.NameAttribute(NameOID.ORGANIZATIONAL_UNIT_NAME, f"{ROLE_OU_PREFIX}{role}"),
        x509.NameAttribute(NameOID.COMMON_NAME, node_id),
    ])


class RootCA:
    """A root certificate and its private key."""

    def __init__(self, cert: x509.Certificate, key: ec.EllipticCurvePrivateKey) -> None:
        spki = (serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo)
        if cert.public_key().public_bytes(*spki) != key.public_key().public_bytes(*spki):
            raise ValueError("the CA key does not match the CA certificate")
        self._cert, self._key = cert, key
        self.cert_pem = cert_to_pem(cert)
        self.key_pem = key_to_pem(key)

    @property
    def certificate(self) -> x509.Certificate:
        return self._cert

    # ------------------------------------------------------------------------------ lifecycle
    @classmethod
    def create(cls, cluster_id: str) -> RootCA:
        """A new self-signed root. `cluster_id` is not in the subject (swarmkit's root is only
        "CN=swarm-ca"); a node learns the cluster from its own certificate's O."""
        key = new_key()
        name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, ROOT_CN)])
        now = dt.datetime.now(dt.UTC)
        ski = x509.SubjectKeyIdentifier.from_public_key(key.public_key())
        cert = (
            x509.CertificateBuilder()
            .subject_name(name).issuer_name(name)
            .public_key(key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(now - dt.timedelta(seconds=BACKDATE_S))
            .not_valid_after(now + ROOT_VALIDITY)
            .add_extension(x509.BasicConstraints(ca=True, path_length=1), critical=True)
            .add_extension(_key_usage(ca=True), critical=True)
            .add_extension(ski, critical=False)
            .sign(key, hashes.SHA256())
        )
        return cls(cert, key)

    @classmethod
    def from_pem(cls, cert_pem: str, key_pem: str) -> RootCA:
        cert = x509.load_pem_x509_certificate(cert_pem.encode())
        key = serialization.load_pem_private_key(key_pem.encode(), password=None)
        if not isinstance(key, ec.EllipticCurvePrivateKey):
            raise ValueError("the CA key is not an EC key")
        return cls(cert, key)

    def save(self, directory: Path) -> None:
        """ca.key (0600) first, then ca.crt (0644): a half-finished save leaves no certificate,
        which `load` reads as no CA rather than as a CA without its key."""
        directory.mkdir(mode=0o700, parents=True, exist_ok=True)
        write_private(directory / KEY_FILE, self.key_pem, 0o600)
        write_private(directory / CERT_FILE, self.cert_pem, 0o644)

    @classmethod
    def load(cls, directory: Path) -> RootCA | None:
        """The CA saved in `directory`, or None if there is none; ValueError if it is damaged."""
        cert_path, key_path = directory / CERT_FILE, directory / KEY_FILE
        if not cert_path.exists():
            return None
        if not key_path.exists():
            raise ValueError(f"{cert_path} exists but its key {key_path} is missing")
        return cls.from_pem(cert_path.read_text(), key_path.read_text())

    # -------------------------------------------------------------------------------- signing
    def sign(self, csr_pem: str, *, node_id: str, role: str, cluster_id: str, expiry_s: float) -> str:
        """A node certificate for the CSR's public key; ValueError for a bad CSR."""
        try:
            csr = x509.load_pem_x509_csr(csr_pem.encode())
        except ValueError as exc:
            raise ValueError(f"invalid certificate signing request: {exc}") from None
        if not csr.is_signature_valid:
            raise ValueError("invalid certificate signing request: bad signature")
        public_key = csr.public_key()
        if not _acceptable_key(public_key):
            raise ValueError("invalid certificate signing request: unsupported key type or size")
        assert isinstance(public_key, ec.EllipticCurvePublicKey | rsa.RSAPublicKey)
        return cert_to_pem(self._node_cert(public_key, node_id, role, cluster_id, expiry_s))

    def issue_self(self, node_id: str, role: str, cluster_id: str, expiry_s: float) -> tuple[str, str]:
        """A fresh key and certificate for this manager's own TLS server: (cert_pem, key_pem)."""
        key = new_key()
        cert = self._node_cert(key.public_key(), node_id, role, cluster_id, expiry_s)
        return cert_to_pem(cert), key_to_pem(key)

    def _node_cert(self, public_key: ec.EllipticCurvePublicKey | rsa.RSAPublicKey, node_id: str,
                   role: str, cluster_id: str, expiry_s: float) -> x509.Certificate:
        if expiry_s <= 0:
            raise ValueError("certificate expiry must be positive")
        now = dt.datetime.now(dt.UTC)
        aki = x509.AuthorityKeyIdentifier.from_issuer_public_key(self._key.public_key())
        san = x509.SubjectAlternativeName([x509.DNSName(f"{ROLE_OU_PREFIX}{role}"), x509.DNSName(node_id)])
        return (
            x509.CertificateBuilder()
            .subject_name(node_subject(node_id, role, cluster_id))
            .issuer_name(self._cert.subject)
            .public_key(public_key)
            .serial_number(x509.random_serial_number())
            .not_valid_before(now - dt.timedelta(seconds=BACKDATE_S))
            .not_valid_after(now + dt.timedelta(seconds=expiry_s))
            .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
            .add_extension(_key_usage(ca=False), critical=True)
            .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH,
                                                  ExtendedKeyUsageOID.CLIENT_AUTH]), critical=False)
            .add_extension(aki, critical=False)
            .add_extension(san, critical=False)
            .sign(self._key, hashes.SHA256())
        )


def _acceptable_key(key: object) -> bool:
    if isinstance(key, ec.EllipticCurvePublicKey):
        return isinstance(key.curve, ec.SECP256R1 | ec.SECP384R1 | ec.SECP521R1)
    return isinstance(key, rsa.RSAPublicKey) and key.key_size >= _MIN_RSA_BITS


def _key_usage(*, ca: bool) -> x509.KeyUsage:
    return x509.KeyUsage(
        digital_signature=True, content_commitment=False, key_encipherment=not ca,
        data_encipherment=False, key_agreement=False, key_cert_sign=ca, crl_sign=ca,
        encipher_only=False, decipher_only=False,
    )


def tls_info(root: RootCA) -> dict[str, Any]:
    """Cluster.TLSInfo as Docker shows it: the trust root and the issuer's subject and key."""
    cert = root.certificate
    spki = cert.public_key().public_bytes(serialization.Encoding.DER,
                                          serialization.PublicFormat.SubjectPublicKeyInfo)
    return {
        "TrustRoot": root.cert_pem,
        "CertIssuerSubject": base64.b64encode(cert.subject.public_bytes()).decode(),
        "CertIssuerPublicKey": base64.b64encode(spki).decode(),
    }

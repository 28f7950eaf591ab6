"""The cluster CA: join-token syntax and checks, node certificate signing, TLSInfo, CA files."""

from __future__ import annotations

import base64
import datetime as dt
import hashlib
import os
import stat
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from shoal.api import tls
from shoal.api.errors import InvalidArgument
from shoal.api.types import JoinTokens
from shoal.manager.ca import tokens
from shoal.manager.ca.authority import RootCA, tls_info

ROOT = RootCA.create("cluster1")
DIGEST = tls.ca_digest(ROOT.cert_pem)


def csr(subject: x509.Name | None = None) -> str:
    key = ec.generate_private_key(ec.SECP256R1())
    built = x509.CertificateSigningRequestBuilder().subject_name(subject or x509.Name([])).sign(
        key, hashes.SHA256())
    return built.public_bytes(serialization.Encoding.PEM).decode()


def subject_of(cert_pem: str) -> dict[str, str]:
    cert = x509.load_pem_x509_certificate(cert_pem.encode())
    return {a.rfc4514_attribute_name: str(a.value) for a in cert.subject}


# --------------------------------------------------------------------------------------- tokens
def test_digest_is_base36_sha256_of_der() -> None:
    der = ROOT.certificate.public_bytes(serialization.Encoding.DER)
    expected = int.from_bytes(hashlib.sha256(der).digest(), "big")
    assert len(DIGEST) == 50
    assert int(DIGEST, 36) == expected


def test_new_tokens_format_and_parse() -> None:
    made = tokens.new_tokens(ROOT.cert_pem)
    assert made.worker != made.manager
    for token in (made.worker, made.manager):
        assert token.startswith("SWMTKN-1-")
        parsed = tls.parse_join_token(token)
        assert parsed.digest == DIGEST
        assert len(parsed.secret) == 25
        assert tls.format_join_token(parsed.digest, parsed.secret) == token


GOOD = tls.format_join_token("a" * 50, "b" * 25)


@pytest.mark.parametrize("token", [
    "", "SWMTKN-1-", "garbage", GOOD.replace("SWMTKN-1", "SWMTKN-2"), GOOD[:-1], GOOD + "c",
    GOOD.replace("a", "A"), GOOD.replace("-b", "_b"), "SWMTKN-1-" + "a" * 50 + "-" + "b" * 24 + "!",
])
def test_malformed_tokens_are_refused(token: str) -> None:
    with pytest.raises(ValueError, match="invalid join token"):
        tls.parse_join_token(token)
    with pytest.raises(InvalidArgument, match="invalid join token"):
        tokens.role_for_token(token, tokens.new_tokens(ROOT.cert_pem))


def test_role_for_token() -> None:
    made = tokens.new_tokens(ROOT.cert_pem)
    assert tokens.role_for_token(made.worker, made) == "worker"
    assert tokens.role_for_token(made.manager, made) == "manager"
    assert tokens.role_for_token(made.worker + "\n", made) == "worker"  # as read from a file


def test_unknown_secret_is_refused() -> None:
    made = tokens.new_tokens(ROOT.cert_pem)
    other = tls.format_join_token(DIGEST, tokens.new_secret())
    with pytest.raises(InvalidArgument, match="A valid join token is necessary to join this cluster"):
        tokens.role_for_token(other, made)


def test_rotation_invalidates_only_the_rotated_role() -> None:
    made = tokens.new_tokens(ROOT.cert_pem)
    rotated = tokens.rotate(made, ROOT.cert_pem, worker=True, manager=False)
    assert rotated.worker != made.worker and rotated.manager == made.manager
    with pytest.raises(InvalidArgument, match="A valid join token"):
        tokens.role_for_token(made.worker, rotated)
    assert tokens.role_for_token(rotated.worker, rotated) == "worker"
    assert tokens.role_for_token(made.manager, rotated) == "manager"


def test_token_of_another_cluster_is_refused() -> None:
    made = tokens.new_tokens(ROOT.cert_pem)
    foreign = tokens.new_tokens(RootCA.create("other").cert_pem)
    with pytest.raises(InvalidArgument, match="join token was issued by another cluster"):
        tokens.role_for_token(foreign.worker, made)


def test_bound_to() -> None:
    assert tokens.bound_to(tokens.new_tokens(ROOT.cert_pem), ROOT.cert_pem)
    assert not tokens.bound_to(tokens.new_tokens(ROOT.cert_pem), RootCA.create("x").cert_pem)
    assert not tokens.bound_to(JoinTokens(), ROOT.cert_pem)


# -------------------------------------------------------------------------------------- signing
def test_subject_comes_from_the_manager_not_the_csr() -> None:
    forged = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "evil"),
                        x509.NameAttribute(NameOID.ORGANIZATIONAL_UNIT_NAME, "swarm-manager"),
                        x509.NameAttribute(NameOID.ORGANIZATION_NAME, "other")])
    cert_pem = ROOT.sign(csr(forged), node_id="node1", role="worker", cluster_id="cluster1", expiry_s=3600)
    assert subject_of(cert_pem) == {"CN": "node1", "OU": "swarm-worker", "O": "cluster1"}
    cert = x509.load_pem_x509_certificate(cert_pem.encode())
    cert.verify_directly_issued_by(ROOT.certificate)
    assert cert.issuer == ROOT.certificate.subject


def test_expiry_is_honoured() -> None:
    before = dt.datetime.now(dt.UTC).replace(microsecond=0)
    cert = x509.load_pem_x509_certificate(
        ROOT.sign(csr(), node_id="n", role="worker", cluster_id="c", expiry_s=4).encode())
    after = dt.datetime.now(dt.UTC)
    assert before + dt.timedelta(seconds=4) <= cert.not_valid_after_utc <= after + dt.timedelta(seconds=4)
    assert cert.not_valid_before_utc <= before - dt.timedelta(seconds=59)


def test_bad_csr_and_role_are_refused() -> None:
    with pytest.raises(ValueError, match="invalid certificate signing request"):
        ROOT.sign("not a csr", node_id="n", role="worker", cluster_id="c", expiry_s=60)
    with pytest.raises(ValueError, match="unknown node role"):
        ROOT.sign(csr(), node_id="n", role="admin", cluster_id="c", expiry_s=60)


def test_issue_self_is_a_manager_identity() -> None:
    cert_pem, key_pem = ROOT.issue_self("mgr", "manager", "cluster1", 60)
    assert subject_of(cert_pem) == {"CN": "mgr", "OU": "swarm-manager", "O": "cluster1"}
    tls.server_context(cert_pem, key_pem, ROOT.cert_pem)  # loads: the key matches


def test_root_is_a_20_year_ca() -> None:
    cert = ROOT.certificate
    assert subject_of(ROOT.cert_pem) == {"CN": "swarm-ca"}
    assert cert.extensions.get_extension_for_class(x509.BasicConstraints).value.ca
    assert cert.not_valid_after_utc - cert.not_valid_before_utc >= dt.timedelta(days=7300)
    assert isinstance(cert.public_key(), ec.EllipticCurvePublicKey)


def test_tls_info() -> None:
    info = tls_info(ROOT)
    assert info["TrustRoot"] == ROOT.cert_pem
    subject = base64.b64decode(info["CertIssuerSubject"])
    assert subject == ROOT.certificate.subject.public_bytes()
    spki = serialization.load_der_public_key(base64.b64decode(info["CertIssuerPublicKey"]))
    assert spki == ROOT.certificate.public_key()


# ------------------------------------------------------------------------------------- CA files
def test_save_and_load(tmp_path: Path) -> None:
    directory = tmp_path / "certificates"
    assert RootCA.load(directory) is None
    ROOT.save(directory)
    assert stat.S_IMODE(os.stat(directory / "ca.key").st_mode) == 0o600
    assert stat.S_IMODE(os.stat(directory / "ca.crt").st_mode) == 0o644
    loaded = RootCA.load(directory)
    assert loaded is not None and loaded.cert_pem == ROOT.cert_pem and loaded.key_pem == ROOT.key_pem
    (directory / "ca.key").unlink()
    with pytest.raises(ValueError, match="missing"):
        RootCA.load(directory)


def test_mismatched_key_is_refused() -> None:
    with pytest.raises(ValueError, match="does not match"):
        RootCA.from_pem(ROOT.cert_pem, RootCA.create("x").key_pem)


def test_peer_identity_without_certificate() -> None:
    assert tls.peer_identity(None) is None


def test_contexts_leave_no_key_material(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    scratch = tmp_path / "shm"
    scratch.mkdir()
    monkeypatch.setattr(tls, "_SHM", scratch)
    cert_pem, key_pem = ROOT.issue_self("n", "worker", "c", 60)
    tls.server_context(cert_pem, key_pem, ROOT.cert_pem)
    tls.client_context(ROOT.cert_pem, cert_pem, key_pem)
    assert list(scratch.iterdir()) == []

"""The mesh CA's pure parts: issuing, SPIFFE IDs, renewal time, rotation steps, the kept state."""

from __future__ import annotations

import datetime
import stat
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives.asymmetric import ec

from gitmesh.certs import ca, store
from gitmesh.certs.authority import ISSUING, STEADY, TRUSTING, CaState, MeshCA, advance, begin_rotation
from gitmesh.errors import CertsError
from gitmesh.mesh.state import Identity

NOW = datetime.datetime(2026, 1, 1, 12, 0, tzinfo=datetime.UTC)
TD = "mesh.test"
BUYER = Identity("bookbuyer", "bookbuyer")


@pytest.fixture(scope="module")
def root() -> ca.Authority:
    return ca.new_root(TD, NOW)


def leaf(issued: ca.Issued) -> x509.Certificate:
    return x509.load_pem_x509_certificates(issued.cert_pem.encode())[0]


def test_a_workload_certificate_names_its_spiffe_id_and_verifies_against_the_root(root: ca.Authority) -> None:
    issued = ca.issue(root, TD, BUYER, NOW)
    cert = leaf(issued)
    sans = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    assert sans.get_values_for_type(x509.UniformResourceIdentifier) == [
        "spiffe://mesh.test/ns/bookbuyer/sa/bookbuyer"
    ]
    assert isinstance(cert.public_key(), ec.EllipticCurvePublicKey)
    assert cert.public_key().curve.name == "secp256r1"  # type: ignore[attr-defined]
    assert cert.not_valid_after_utc - NOW == ca.DEFAULT_LIFETIME
    assert issued.not_after == NOW + ca.DEFAULT_LIFETIME
    cert.verify_directly_issued_by(x509.load_pem_x509_certificate(root.root_pem.encode()))
    assert ca.identity_of(issued.cert_pem, TD) == BUYER
    assert ca.identity_of(issued.cert_pem, "other.domain") is None


def test_an_intermediate_signs_and_its_chain_travels_with_the_leaf(root: ca.Authority) -> None:
    # An intermediate made by the root (as a user's own PKI would provide it).
    from cryptography.hazmat.primitives import hashes, serialization

    key = ec.generate_private_key(ec.SECP256R1())
    root_cert = x509.load_pem_x509_certificate(root.cert_pem.encode())
    root_key = serialization.load_pem_private_key(root.key_pem.encode(), None)
    name = x509.Name([x509.NameAttribute(x509.oid.NameOID.COMMON_NAME, "intermediate")])
    inter = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(root_cert.subject)
        .public_key(key.public_key())
        .serial_number(1)
        .not_valid_before(NOW - datetime.timedelta(days=1))
        .not_valid_after(NOW + datetime.timedelta(days=30))
        .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
        .sign(root_key, hashes.SHA256())  # type: ignore[arg-type]
    )
    inter_pem = inter.public_bytes(serialization.Encoding.PEM).decode()
    key_pem = key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    ).decode()
    authority = ca.authority_from_pem(inter_pem + root.cert_pem, key_pem)
    assert authority.root_pem == root.root_pem
    issued = ca.issue(authority, TD, BUYER, NOW, datetime.timedelta(days=90))
    chain = x509.load_pem_x509_certificates(issued.cert_pem.encode())
    assert [c.subject for c in chain] == [chain[0].subject, inter.subject]  # the leaf, the intermediate
    assert issued.not_after == inter.not_valid_after_utc  # never outlives its issuer
    with pytest.raises(ValueError, match="self-signed root"):
        ca.authority_from_pem(inter_pem, key_pem)
    with pytest.raises(ValueError, match="does not belong"):
        ca.authority_from_pem(inter_pem + root.cert_pem, root.key_pem)


def test_a_leaf_is_refused_as_a_ca(root: ca.Authority) -> None:
    issued = ca.issue(root, TD, BUYER, NOW)
    with pytest.raises(ValueError, match="not a CA"):
        ca.authority_from_pem(
            issued.cert_pem.split("-----END CERTIFICATE-----")[0] + "-----END CERTIFICATE-----\n",
            issued.key_pem,
        )


@pytest.mark.parametrize(
    ("elapsed_hours", "renew"), [(0, False), (15.9, False), (16.0, True), (23.9, True), (30, True)]
)
def test_renewal_starts_at_two_thirds_of_the_lifetime(
    root: ca.Authority, elapsed_hours: float, renew: bool
) -> None:
    issued = ca.issue(root, TD, BUYER, NOW)
    later = NOW + datetime.timedelta(hours=elapsed_hours)
    assert ca.should_renew(issued, later) is renew


def test_the_mesh_ca_keeps_a_certificate_until_it_is_due(root: ca.Authority) -> None:
    mesh_ca = MeshCA(CaState(TD, (root,)), lifetime=datetime.timedelta(hours=3))
    first = mesh_ca.certificate(BUYER, NOW)
    assert mesh_ca.certificate(BUYER, NOW + datetime.timedelta(hours=1)) is first
    assert mesh_ca.due(NOW + datetime.timedelta(hours=1)) == []
    assert mesh_ca.due(NOW + datetime.timedelta(hours=2)) == [BUYER]
    renewed = mesh_ca.certificate(BUYER, NOW + datetime.timedelta(hours=2))
    assert renewed.serial != first.serial
    assert mesh_ca.expiries() == {"bookbuyer/bookbuyer": renewed.not_after}


def test_a_rotation_trusts_then_issues_then_retires(root: ca.Authority) -> None:
    new = ca.new_root(TD, NOW)
    steady = CaState(TD, (root,))
    mesh_ca = MeshCA(steady)
    old_cert = mesh_ca.certificate(BUYER, NOW)

    trusting = begin_rotation(steady, new)
    assert trusting.phase == TRUSTING and trusting.signing == root
    assert trusting.bundle() == (root.root_pem, new.root_pem)
    mesh_ca.set_state(trusting)
    assert mesh_ca.due(NOW) == []  # nothing reissued until every sidecar trusts the new root
    with pytest.raises(ValueError, match="already under way"):
        begin_rotation(trusting, new)

    issuing = advance(trusting)
    assert issuing.phase == ISSUING and issuing.signing == new and len(issuing.bundle()) == 2
    mesh_ca.set_state(issuing)
    assert mesh_ca.due(NOW) == [BUYER]
    new_cert = mesh_ca.certificate(BUYER, NOW)
    leaf(new_cert).verify_directly_issued_by(x509.load_pem_x509_certificate(new.cert_pem.encode()))
    assert new_cert.serial != old_cert.serial

    retired = advance(issuing)
    assert retired.phase == STEADY and retired.bundle() == (new.root_pem,)
    assert advance(retired) == retired


def test_the_state_is_kept_in_a_file_only_its_owner_reads(tmp_path: Path, root: ca.Authority) -> None:
    path = store.ca_path(tmp_path / "store.db")
    assert path == tmp_path / "store.db.ca.json"
    keeper = store.FileKeeper(path)
    state = store.load_or_create(keeper, NOW, TD)
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert store.load_or_create(keeper, NOW, TD) == state  # made once, then read back
    rotating = begin_rotation(state, root)
    keeper.save(rotating)
    assert keeper.load() == rotating
    path.write_text("{not json")
    with pytest.raises(CertsError, match="not a gitmesh CA state"):
        keeper.load()

"""The mesh certificate authority as pure functions: the clock is passed in, PEM comes out.

A workload certificate names one identity by its SPIFFE ID
(``spiffe://<trust-domain>/ns/<namespace>/sa/<service-account>``) as its only
URI SAN, is short-lived, and is renewed once two thirds of its lifetime have
passed, so a renewal that fails has a third of the lifetime to be retried.
Keys are ECDSA P-256, or a larger curve when an RSA size is asked for that P-256 does not match
(``workload_key``).
"""

from __future__ import annotations

import datetime
import ipaddress
import re
from dataclasses import dataclass

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from gitmesh.mesh.state import Identity

DEFAULT_TRUST_DOMAIN = "cluster.local"
DEFAULT_LIFETIME = datetime.timedelta(hours=24)
ROOT_LIFETIME = datetime.timedelta(days=3650)
# Clocks differ a little between machines: certificates are valid from slightly before they are made.
BACKDATE = datetime.timedelta(minutes=5)


@dataclass(frozen=True)
class Authority:
    """A CA that signs: its certificate (a root, or an intermediate with ``chain`` up to the root)."""

    cert_pem: str
    key_pem: str
    chain_pem: str = ""  # intermediates above ``cert_pem``, then the root; empty for a root

    @property
    def root_pem(self) -> str:
        """The self-signed certificate at the top: what goes into trust bundles."""
        certs = x509.load_pem_x509_certificates((self.chain_pem or self.cert_pem).encode())
        return certs[-1].public_bytes(serialization.Encoding.PEM).decode()


@dataclass(frozen=True)
class Issued:
    """A certificate for one identity, its key, and when it stops and should be replaced."""

    identity: Identity
    cert_pem: str  # the leaf, then the issuer's chain (without the root)
    key_pem: str
    issued_at: datetime.datetime  # the certificate is valid from a little earlier (BACKDATE)
    not_after: datetime.datetime

    @property
    def serial(self) -> int:
        return x509.load_pem_x509_certificate(self.cert_pem.encode()).serial_number


def spiffe_id(trust_domain: str, identity: Identity) -> str:
    return f"spiffe://{trust_domain}/ns/{identity.namespace}/sa/{identity.name}"


def identity_of(cert_pem: str | bytes, trust_domain: str) -> Identity | None:
    """The identity a (leaf) certificate's SPIFFE ID names, or None if it names none in ``trust_domain``."""
    data = cert_pem.encode() if isinstance(cert_pem, str) else cert_pem
    cert = x509.load_pem_x509_certificates(data)[0]
    try:
        sans = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    except x509.ExtensionNotFound:
        return None
    uris = sans.get_values_for_type(x509.UniformResourceIdentifier)
    found = (
        re.fullmatch(rf"spiffe://{re.escape(trust_domain)}/ns/([^/]+)/sa/([^/]+)", uris[0])
        if len(uris) == 1
        else None
    )
    return Identity(found[1], found[2]) if found else None


def new_root(
    trust_domain: str, now: datetime.datetime, lifetime: datetime.timedelta = ROOT_LIFETIME
) -> Authority:
    """A self-signed root for the mesh; its subject names the trust domain and its serial."""
    key = ec.generate_private_key(ec.SECP256R1())
    serial = x509.random_serial_number()
    # Two roots of one mesh (during a rotation) must not share a name: the serial tells them apart.
    common_name = f"gitmesh root {serial:040x}"[:24] + f" {trust_domain}"
    name = x509.Name(
        [
            x509.NameAttribute(NameOID.ORGANIZATION_NAME, "gitmesh"),
            x509.NameAttribute(NameOID.COMMON_NAME, common_name[:64]),
        ]
    )
    cert = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(serial)
        .not_valid_before(now - BACKDATE)
        .not_valid_after(now + lifetime)
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .add_extension(
            x509.KeyUsage(False, False, False, False, False, True, True, False, False), critical=True
        )
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), critical=False)
        .sign(key, hashes.SHA256())
    )
    return Authority(_pem(cert), _key_pem(key))


def authority_from_pem(cert_pem: str, key_pem: str) -> Authority:
    """A user-provided CA: a root, or an intermediate followed by its chain up to the root.

    ValueError when the key does not belong to the first certificate, it is not a CA, or the
    chain does not end in a self-signed root."""
    try:
        certs = x509.load_pem_x509_certificates(cert_pem.encode())
        key = serialization.load_pem_private_key(key_pem.encode(), password=None)
    except ValueError as e:
        raise ValueError(f"cannot read the CA certificate or key: {e}") from e
    leaf = certs[0]
    if key.public_key().public_bytes(
        serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
    ) != leaf.public_key().public_bytes(
        serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
    ):
        raise ValueError("the CA key does not belong to the first certificate")
    try:
        is_ca = leaf.extensions.get_extension_for_class(x509.BasicConstraints).value.ca
    except x509.ExtensionNotFound:
        is_ca = False
    if not is_ca:
        raise ValueError("the first certificate is not a CA (basicConstraints CA:TRUE is missing)")
    if certs[-1].issuer != certs[-1].subject:
        raise ValueError("the chain does not end in a self-signed root: append the root certificate")
    chain = "".join(_pem(c) for c in certs[1:])
    return Authority(_pem(leaf), key_pem, chain)


def issue(
    authority: Authority,
    trust_domain: str,
    identity: Identity,
    now: datetime.datetime,
    lifetime: datetime.timedelta = DEFAULT_LIFETIME,
    *,
    server_name: str = "",
    key_bits: int | None = None,
) -> Issued:
    """A fresh key and a certificate for ``identity``, usable as TLS client and server.

    ``server_name`` adds a DNS or IP SAN (for the xDS server, which clients reach by address);
    ``key_bits``: see ``workload_key``."""
    ca_cert = x509.load_pem_x509_certificate(authority.cert_pem.encode())
    ca_key = serialization.load_pem_private_key(authority.key_pem.encode(), password=None)
    if not isinstance(ca_key, ec.EllipticCurvePrivateKey | rsa.RSAPrivateKey):
        raise ValueError("the CA key must be ECDSA or RSA")
    key = workload_key(key_bits)
    sans: list[x509.GeneralName] = [x509.UniformResourceIdentifier(spiffe_id(trust_domain, identity))]
    if server_name:
        sans.append(_server_name(server_name))
    not_after = min(now + lifetime, ca_cert.not_valid_after_utc)
    cert = (
        x509.CertificateBuilder()
        .subject_name(x509.Name([x509.NameAttribute(NameOID.ORGANIZATION_NAME, trust_domain)]))
        .issuer_name(ca_cert.subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - BACKDATE)
        .not_valid_after(not_after)
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(
            x509.KeyUsage(True, False, True, False, True, False, False, False, False), critical=True
        )
        .add_extension(
            x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH, ExtendedKeyUsageOID.CLIENT_AUTH]),
            critical=False,
        )
        .add_extension(x509.SubjectAlternativeName(sans), critical=True)
        .add_extension(
            x509.AuthorityKeyIdentifier.from_issuer_public_key(ca_key.public_key()), critical=False
        )
        .sign(ca_key, hashes.SHA256())
    )
    # A chain without the root: peers hold the root in their bundle, intermediates travel with the leaf.
    above = x509.load_pem_x509_certificates((authority.cert_pem + authority.chain_pem).encode())
    chain = "".join(_pem(c) for c in above if c.issuer != c.subject)
    return Issued(identity, _pem(cert) + chain, _key_pem(key), now, not_after)


def workload_key(rsa_bits: int | None = None) -> ec.EllipticCurvePrivateKey:
    """A new ECDSA key at least as strong as an RSA key of ``rsa_bits`` (OSM's certKeyBitSize):
    P-256 up to RSA 3072, P-384 up to 7680, P-521 above (NIST SP 800-57 part 1's equivalences)."""
    if rsa_bits is None or rsa_bits <= 3072:
        return ec.generate_private_key(ec.SECP256R1())
    return ec.generate_private_key(ec.SECP384R1() if rsa_bits <= 7680 else ec.SECP521R1())


def without_roots(chain: list[str]) -> list[str]:
    """What travels with a leaf: every certificate of a chain but a self-signed root."""
    return [c.strip() + "\n" for c in chain if not _self_signed(c)]


def top_of(chain: list[str]) -> tuple[str, ...]:
    """The roots to trust from a CA chain: its self-signed certificates, or its top when it stops short."""
    roots = [c for c in chain if _self_signed(c)] or chain[-1:]
    return tuple(_pem(x509.load_pem_x509_certificate(c.encode())) for c in roots)


def _self_signed(pem: str) -> bool:
    cert = x509.load_pem_x509_certificate(pem.encode())
    return cert.issuer == cert.subject


def not_after(cert_pem: str) -> datetime.datetime:
    """When a certificate (the first in ``cert_pem``) expires."""
    return x509.load_pem_x509_certificates(cert_pem.encode())[0].not_valid_after_utc


def should_renew(issued: Issued, now: datetime.datetime) -> bool:
    """Past two thirds of its lifetime from issue (so also when expired)."""
    return now >= issued.issued_at + (issued.not_after - issued.issued_at) * 2 / 3


def _server_name(name: str) -> x509.GeneralName:
    try:
        return x509.IPAddress(ipaddress.ip_address(name))
    except ValueError:
        return x509.DNSName(name)


def _pem(cert: x509.Certificate) -> str:
    return cert.public_bytes(serialization.Encoding.PEM).decode()


def _key_pem(key: ec.EllipticCurvePrivateKey) -> str:
    return key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    ).decode()


__all__ = [
    "DEFAULT_LIFETIME",
    "DEFAULT_TRUST_DOMAIN",
    "Authority",
    "Issued",
    "authority_from_pem",
    "identity_of",
    "issue",
    "new_root",
    "not_after",
    "should_renew",
    "spiffe_id",
]

"""The cert-manager provider's request and its reading of the answer (``certmanager.CertManager``)
over a fake API that plays cert-manager with a real root: the CSR names the SPIFFE ID alone, a
signed request gives the certificate and the issuer's CA, and every way it is not signed is said
with the request, the issuer and cert-manager's own words."""

from __future__ import annotations

import base64
import datetime
from collections.abc import Mapping
from typing import Any

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization

from gitmesh.certs import ca
from gitmesh.certs.certmanager import CertManager, CertManagerSettings
from gitmesh.certs.provider import ProviderError
from gitmesh.errors import GitmeshError

NOW = datetime.datetime.now(datetime.UTC)
SPIFFE = "spiffe://cluster.local/ns/bookbuyer/sa/bookbuyer"
SETTINGS = CertManagerSettings("mesh-ca", namespace="gitmesh-system")


class FakeCertManager:
    """CertificateRequests that answer as cert-manager's CA issuer would, after ``polls`` reads."""

    def __init__(self, conditions: list[dict[str, str]] | None = None, polls: int = 2) -> None:
        self.root = ca.new_root("cluster.local", NOW)
        self.conditions = conditions  # None: approved and signed
        self.polls = polls
        self.created: list[Mapping[str, Any]] = []
        self.deleted: list[str] = []
        self.reads = 0

    def create(self, namespace: str, request: Mapping[str, Any]) -> dict[str, Any]:
        assert namespace == "gitmesh-system"
        self.created.append(request)
        return {**request, "metadata": {**request["metadata"], "name": "gitmesh-x7k2p"}}

    def get(self, namespace: str, name: str) -> dict[str, Any]:
        self.reads += 1
        if self.reads < self.polls:
            return {"status": {}}
        if self.conditions is not None:
            return {"status": {"conditions": self.conditions}}
        csr = x509.load_pem_x509_csr(base64.b64decode(self.created[-1]["spec"]["request"]))
        issuer = x509.load_pem_x509_certificate(self.root.cert_pem.encode())
        key = serialization.load_pem_private_key(self.root.key_pem.encode(), None)
        cert = (
            x509.CertificateBuilder()
            .subject_name(csr.subject)
            .issuer_name(issuer.subject)
            .public_key(csr.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(NOW)
            .not_valid_after(NOW + datetime.timedelta(hours=1))
            .add_extension(csr.extensions.get_extension_for_class(x509.SubjectAlternativeName).value, True)
            .sign(key, hashes.SHA256())  # type: ignore[arg-type]
        )
        pem = cert.public_bytes(serialization.Encoding.PEM)
        return {
            "status": {
                "conditions": [{"type": "Approved", "status": "True"}, {"type": "Ready", "status": "True"}],
                "certificate": base64.b64encode(pem).decode(),
                "ca": base64.b64encode(self.root.root_pem.encode()).decode(),
            }
        }

    def delete(self, namespace: str, name: str) -> None:
        self.deleted.append(name)


def provider(api: FakeCertManager, key_bits: int | None = None) -> CertManager:
    clock = iter(range(1000))
    return CertManager(SETTINGS, api, key_bits, sleep=lambda s: None, clock=lambda: float(next(clock)))


def test_a_certificate_request_for_the_spiffe_id_alone_is_made_waited_for_and_deleted() -> None:
    api = FakeCertManager()
    cert, key, roots = provider(api).issue(SPIFFE, datetime.timedelta(minutes=30))
    (request,) = api.created
    assert request["spec"]["issuerRef"] == {"name": "mesh-ca", "kind": "Issuer", "group": "cert-manager.io"}
    assert request["spec"]["duration"] == "1800s" and request["spec"]["isCA"] is False
    assert set(request["spec"]["usages"]) == {
        "digital signature",
        "key encipherment",
        "server auth",
        "client auth",
    }
    csr = x509.load_pem_x509_csr(base64.b64decode(request["spec"]["request"]))
    assert csr.subject == x509.Name([])
    sans = csr.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    assert sans.get_values_for_type(x509.UniformResourceIdentifier) == [SPIFFE] and len(list(sans)) == 1
    assert ca.identity_of(cert, "cluster.local") is not None
    assert roots == (api.root.root_pem,)
    leaf = x509.load_pem_x509_certificate(cert.encode())
    private = serialization.load_pem_private_key(key.encode(), None)
    assert leaf.public_key() == private.public_key()  # the key gitmesh made, never sent anywhere
    assert api.deleted == ["gitmesh-x7k2p"] and api.reads == 2


def test_the_key_is_as_strong_as_the_rsa_size_asked_for() -> None:
    api = FakeCertManager()
    _, key, _ = provider(api, key_bits=4096).issue(SPIFFE, datetime.timedelta(minutes=30))
    private = serialization.load_pem_private_key(key.encode(), None)
    assert private.curve.name == "secp384r1"


@pytest.mark.parametrize(
    ("conditions", "reason"),
    [
        (
            [
                {
                    "type": "Ready",
                    "status": "False",
                    "reason": "Pending",
                    "message": 'Referenced "Issuer" not found',
                }
            ],
            "CertificateRequest gitmesh-system/gitmesh-x7k2p not issued after 30s: "
            'Pending: Referenced "Issuer" not found',
        ),
        (
            [{"type": "Denied", "status": "True", "message": "not for the mesh"}],
            "CertificateRequest gitmesh-system/gitmesh-x7k2p denied: not for the mesh",
        ),
        (
            [{"type": "Ready", "status": "False", "reason": "Failed", "message": "the CA has expired"}],
            "CertificateRequest gitmesh-system/gitmesh-x7k2p failed: the CA has expired",
        ),
        ([], "CertificateRequest gitmesh-system/gitmesh-x7k2p not issued after 30s: not approved yet"),
    ],
)
def test_a_request_not_signed_is_said_with_cert_managers_words(
    conditions: list[dict[str, str]], reason: str
) -> None:
    api = FakeCertManager(conditions)
    with pytest.raises(ProviderError) as refused:
        provider(api).issue(SPIFFE, datetime.timedelta(minutes=30))
    assert str(refused.value) == f"cert-manager (Issuer gitmesh-system/mesh-ca): {reason}"
    assert api.deleted == ["gitmesh-x7k2p"]  # never left behind


def test_an_api_that_refuses_is_said() -> None:
    class Refusing(FakeCertManager):
        def create(self, namespace: str, request: Mapping[str, Any]) -> dict[str, Any]:
            raise GitmeshError("certificaterequests.cert-manager.io is forbidden")

    with pytest.raises(ProviderError, match=r"cannot create a CertificateRequest: .* is forbidden"):
        provider(Refusing()).issue(SPIFFE, datetime.timedelta(minutes=30))

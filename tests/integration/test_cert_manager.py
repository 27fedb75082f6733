"""Workload certificates from a real cert-manager (its CA issuer and approver, built from its Go
module and run as a host process against a test apiserver): gitmesh's CertificateRequests are
approved by cert-manager's approver and signed by a CA Issuer; a wrong Issuer name is a clear
problem; real Envoy sidecars present cert-manager's certificates and call each other over mTLS."""

from __future__ import annotations

import collections
import datetime
from collections.abc import Iterator
from pathlib import Path

import pytest
import yaml
from cryptography import x509

from gitmesh.certs import ca
from gitmesh.certs.certmanager import CertManager, CertManagerSettings
from gitmesh.certs.provider import ProviderError
from gitmesh.demo import eventually
from gitmesh.kube.certificate_requests import CertificateRequests
from gitmesh.kube.client import Client
from tests import cert_manager as cm
from tests.bookstore import Bookstore
from tests.integration.test_mtls_envoy import Load, active_secrets, bundle_of, certs
from tests.integration.test_vault_pki import issuer_of
from tests.kube import Cluster

pytestmark = pytest.mark.integration

SPIFFE = "spiffe://cluster.local/ns/bookbuyer/sa/bookbuyer"


@pytest.fixture
def issuer_root(cert_manager_build: Path, crd_cluster: Cluster, tmp_path: Path) -> Iterator[ca.Authority]:
    with cm.running(cert_manager_build, crd_cluster, tmp_path) as root:
        yield root


def test_certificate_requests_are_approved_and_signed_by_cert_manager(
    issuer_root: ca.Authority, crd_cluster: Cluster
) -> None:
    requests = CertificateRequests(Client.connect(str(crd_cluster.kubeconfig)))
    provider = CertManager(CertManagerSettings(cm.ISSUER, namespace=cm.NAMESPACE), requests)
    cert, _, roots = provider.issue(SPIFFE, datetime.timedelta(hours=1))
    leaf = x509.load_pem_x509_certificates(cert.encode())[0]
    sans = leaf.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    assert sans.get_values_for_type(x509.UniformResourceIdentifier) == [SPIFFE]
    assert [x509.load_pem_x509_certificate(r.encode()) for r in roots] == [
        x509.load_pem_x509_certificate(issuer_root.root_pem.encode())
    ]
    leaf.verify_directly_issued_by(x509.load_pem_x509_certificate(issuer_root.root_pem.encode()))
    # Answered and gone: nothing of gitmesh's is left in the namespace.
    left = crd_cluster.kubectl("get", "certificaterequests", "-n", cm.NAMESPACE, "-o", "name").stdout
    assert left.strip() == ""

    wrong = CertManager(CertManagerSettings("no-such-ca", namespace=cm.NAMESPACE), requests, wait=10)
    with pytest.raises(ProviderError) as refused:
        wrong.issue(SPIFFE, datetime.timedelta(hours=1))
    message = str(refused.value)
    assert message.startswith(
        f"cert-manager (Issuer {cm.NAMESPACE}/no-such-ca): CertificateRequest {cm.NAMESPACE}/"
    )
    assert 'not issued after 10s: Pending: Referenced "Issuer" not found' in message, message


class CertManagerBookstore(Bookstore):
    """The bookstore in a cluster, ``gitmesh run --config`` choosing cert-manager's Issuer."""

    def __init__(self, workdir: Path, kubeconfig: Path, host: str, provider: str = "cert-manager") -> None:
        workdir.mkdir(parents=True, exist_ok=True)
        self.config = workdir / "gitmesh.yaml"
        self.choose(provider)
        super().__init__(workdir, kubeconfig=kubeconfig, host=host, cert_lifetime="1h")

    def choose(self, provider: str) -> None:
        """Write the configuration with ``provider`` (``gitmesh run`` reads it again when it changes)."""
        manager = {"cert_manager": {"issuer": cm.ISSUER, "namespace": cm.NAMESPACE}}
        section = {"provider": provider, **(manager if provider == "cert-manager" else {})}
        self.config.write_text(yaml.safe_dump({"certificates": section}))

    def run_options(self) -> list[str]:
        return [*super().run_options(), "--config", str(self.config)]


def test_sidecars_present_cert_manager_certificates(
    issuer_root: ca.Authority, crd_cluster: Cluster, pod_address: str, tmp_path: Path
) -> None:
    demo = CertManagerBookstore(tmp_path / "demo", crd_cluster.kubeconfig, pod_address)
    try:
        demo.start()
        root = x509.load_pem_x509_certificate(issuer_root.root_pem.encode())
        assert issuer_of(demo, "bookbuyer") == [root.subject.rfc4514_string()]
        assert certs(demo, "bookbuyer")["spiffe"] == [SPIFFE]
        assert certs(demo, "bookstore-v1")["spiffe"] == ["spiffe://cluster.local/ns/bookstore/sa/bookstore"]
        bundle = x509.load_pem_x509_certificates(bundle_of(active_secrets(demo, "bookbuyer")).encode())
        assert bundle == [root]  # cert-manager's CA alone
        assert demo.buy()[0] == 200  # mTLS between sidecars holding cert-manager's certificates
        report = eventually(lambda: demo_report(demo), lambda r: bool(r), "the provider in the report")
        assert report == {"name": "cert-manager", "problem": None}
    except (AssertionError, TimeoutError):
        for log in ("gitmesh-run.log", "../cert-manager.log"):
            path = tmp_path / "demo" / log
            if path.exists():
                print(f"--- {log} ---\n{path.read_text()[-4000:]}")
        raise
    finally:
        demo.close()


def demo_report(demo: Bookstore) -> dict[str, object]:
    report = demo.settings().state.xds.latest() or {}
    return dict(report.get("certificate_provider") or {})


def test_switching_to_cert_manager_under_traffic_loses_no_request(
    issuer_root: ca.Authority, crd_cluster: Cluster, pod_address: str, tmp_path: Path
) -> None:
    demo = CertManagerBookstore(tmp_path / "demo", crd_cluster.kubeconfig, pod_address, provider="builtin")
    try:
        demo.start()
        root = x509.load_pem_x509_certificate(issuer_root.root_pem.encode())
        held = lambda name: (  # noqa: E731
            issuer_of(demo, name),
            x509.load_pem_x509_certificates(bundle_of(active_secrets(demo, name)).encode()),
        )
        assert root not in held("bookbuyer")[1]
        with Load(demo) as load:
            eventually(lambda: len(load.results), lambda n: n > 20, "traffic flowing")
            demo.choose("cert-manager")
            for name in sorted(demo.sidecars):
                eventually(
                    lambda name=name: held(name),
                    lambda h: h == ([root.subject.rfc4514_string()], [root]),
                    f"{name} holding cert-manager's certificate and trusting its CA alone",
                    timeout=90,
                )
            sent = len(load.results)
            eventually(lambda: len(load.results), lambda n: n > sent + 20, "traffic after the switch")
        counts = collections.Counter(load.results)
        print(f"builtin -> cert-manager under traffic: {len(load.results)} requests, {counts}")
        assert counts[200] == len(load.results), counts
    except (AssertionError, TimeoutError):
        print((tmp_path / "demo" / "gitmesh-run.log").read_text()[-5000:])
        raise
    finally:
        demo.close()

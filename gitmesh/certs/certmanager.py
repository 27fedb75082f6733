"""Workload certificates from cert-manager: one ``CertificateRequest`` per certificate.

gitmesh makes the key (ECDSA, ``ca.workload_key``) and a CSR whose only URI SAN is the SPIFFE ID,
creates a CertificateRequest for it against the configured Issuer or ClusterIssuer, and waits for
cert-manager's approver to approve it and the issuer to sign it (``Ready``), reading the reason
from its conditions when it does not (a wrong issuer name, a denial, a failure). The request is
deleted once answered: the certificate and its key live in gitmesh's memory only. The trust bundle
is the CA that the issuer reports (``status.ca``), else the top of the chain it returns.

The Kubernetes API is reached through ``Requests`` (``kube.certificate_requests`` on the cluster's
client), so that this module stays below the client.
"""

from __future__ import annotations

import base64
import contextlib
import datetime
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any, Protocol

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec

from gitmesh.certs import ca
from gitmesh.certs.provider import ProviderError
from gitmesh.errors import GitmeshError

GROUP = "cert-manager.io"
WAIT_SECONDS = 30.0  # for one request to be signed; issuing runs off the serving path
POLL_SECONDS = 0.2
USAGES = ("digital signature", "key encipherment", "server auth", "client auth")


@dataclass(frozen=True)
class CertManagerSettings:
    """Which issuer signs, and the namespace gitmesh's CertificateRequests go in (an Issuer's own)."""

    issuer: str
    kind: str = "Issuer"  # or ClusterIssuer
    group: str = GROUP
    namespace: str = "gitmesh-system"

    def __str__(self) -> str:
        return f"{self.kind} {self.namespace + '/' if self.kind == 'Issuer' else ''}{self.issuer}"


class Requests(Protocol):
    """CertificateRequests in the cluster; a GitmeshError when the API refuses or cannot be reached."""

    def create(self, namespace: str, request: Mapping[str, Any]) -> dict[str, Any]:
        """The request as created (``metadata.name`` given by the API server from ``generateName``)."""

    def get(self, namespace: str, name: str) -> dict[str, Any]: ...

    def delete(self, namespace: str, name: str) -> None: ...


def request_pem(spiffe_id: str, key: ec.EllipticCurvePrivateKey) -> bytes:
    """A certificate signing request for ``spiffe_id`` alone (its only SAN, no subject), signed with
    ``key``, as PEM: what a CertificateRequest's ``spec.request`` holds, base64-encoded."""
    csr = (
        x509.CertificateSigningRequestBuilder()
        .subject_name(x509.Name([]))
        .add_extension(
            x509.SubjectAlternativeName([x509.UniformResourceIdentifier(spiffe_id)]), critical=True
        )
        .sign(key, hashes.SHA256())
    )
    return csr.public_bytes(serialization.Encoding.PEM)


class CertManager:
    """An ``Issuer`` (``provider.Issuer``) over cert-manager's CertificateRequests."""

    name = "cert-manager"

    def __init__(
        self,
        settings: CertManagerSettings,
        requests: Requests,
        key_bits: int | None = None,
        sleep: Callable[[float], None] = time.sleep,
        clock: Callable[[], float] = time.monotonic,
        wait: float = WAIT_SECONDS,
    ) -> None:
        self.settings = settings
        self.key_bits = key_bits  # see ca.workload_key
        self.wait = wait  # seconds for one request to be signed
        self._requests, self._sleep, self._clock = requests, sleep, clock

    def issue(self, spiffe_id: str, lifetime: datetime.timedelta) -> tuple[str, str, tuple[str, ...]]:
        key = ca.workload_key(self.key_bits)
        body = {
            "apiVersion": f"{GROUP}/v1",
            "kind": "CertificateRequest",
            "metadata": {
                "generateName": "gitmesh-",
                "labels": {"app.kubernetes.io/managed-by": "gitmesh"},
                "annotations": {"gitmesh.dev/spiffe-id": spiffe_id},
            },
            "spec": {
                "request": base64.b64encode(request_pem(spiffe_id, key)).decode(),
                "issuerRef": {
                    "name": self.settings.issuer,
                    "kind": self.settings.kind,
                    "group": self.settings.group,
                },
                "duration": f"{int(lifetime.total_seconds())}s",
                "usages": list(USAGES),
                "isCA": False,
            },
        }
        namespace = self.settings.namespace
        try:
            created = self._requests.create(namespace, body)
        except GitmeshError as e:
            raise self._error(f"cannot create a CertificateRequest: {e}") from None
        name = str(created["metadata"]["name"])
        try:
            status = self._wait(name)
        finally:
            with contextlib.suppress(GitmeshError):  # answered either way; a leftover holds no key
                self._requests.delete(namespace, name)
        key_pem = key.private_bytes(
            serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
        ).decode()
        try:
            chain = _pems(status["certificate"])
            roots = ca.top_of(_pems(status["ca"]) if status.get("ca") else chain)
            return "".join(ca.without_roots(chain)), key_pem, roots
        except (KeyError, ValueError) as e:
            raise self._error(
                f"CertificateRequest {namespace}/{name}: its certificate cannot be read: {e}"
            ) from None

    def _wait(self, name: str) -> dict[str, Any]:
        """The status of the request once Ready; a ProviderError naming its condition otherwise."""
        where = f"CertificateRequest {self.settings.namespace}/{name}"
        deadline = self._clock() + self.wait
        waiting = "not approved yet"
        while True:
            try:
                status = self._requests.get(self.settings.namespace, name).get("status") or {}
            except GitmeshError as e:
                raise self._error(f"cannot read {where}: {e}") from None
            conditions = {c.get("type"): c for c in status.get("conditions") or ()}
            for kind in ("Denied", "InvalidRequest"):
                if conditions.get(kind, {}).get("status") == "True":
                    raise self._error(f"{where} {kind.lower()}: {conditions[kind].get('message', '')}")
            ready = conditions.get("Ready") or {}
            if ready.get("status") == "True" and status.get("certificate"):
                return dict(status)
            if ready.get("reason") in ("Failed", "Denied"):
                raise self._error(f"{where} failed: {ready.get('message', '')}")
            if ready.get("message"):
                waiting = f"{ready.get('reason', 'Pending')}: {ready['message']}"
            elif conditions.get("Approved", {}).get("status") == "True":
                waiting = "approved, not signed yet"
            if self._clock() >= deadline:
                raise self._error(f"{where} not issued after {self.wait:g}s: {waiting}")
            self._sleep(POLL_SECONDS)

    def _error(self, reason: str) -> ProviderError:
        return ProviderError(f"{self.name} ({self.settings}): {reason}")


def _pems(b64: str) -> list[str]:
    """The certificates of a base64 PEM bundle, each as PEM."""
    data = base64.b64decode(b64)
    return [
        c.public_bytes(serialization.Encoding.PEM).decode() for c in x509.load_pem_x509_certificates(data)
    ]


__all__ = [
    "GROUP",
    "POLL_SECONDS",
    "USAGES",
    "WAIT_SECONDS",
    "CertManager",
    "CertManagerSettings",
    "Requests",
    "request_pem",
]

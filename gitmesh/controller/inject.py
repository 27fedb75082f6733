"""The injection webhook in ``gitmesh run``: served with a certificate from the mesh CA, which is
renewed when due and reissued by a new signer; the webhook configuration's ``caBundle`` follows
the CA's roots (through a rotation, both roots are there), and so do the roots injected pods
trust gitmesh by. In a cluster it also trades injected pods' tokens for their sidecars'
certificates (``PodIdentities``)."""

from __future__ import annotations

import datetime
import logging
import threading
from collections.abc import Callable
from dataclasses import dataclass, replace

from gitmesh.certs import ca, store
from gitmesh.certs.authority import MeshCA
from gitmesh.cluster.kube import KubeObjects
from gitmesh.errors import GitmeshError
from gitmesh.inject import identity, patch, webhook
from gitmesh.install.manifests import NAME, NAMESPACE
from gitmesh.kube import review
from gitmesh.kube.client import Client
from gitmesh.settings import Settings
from gitmesh.xds.bootstrap import SERVER_IDENTITY

log = logging.getLogger(__name__)

SERVER_NAME = f"{NAME}.{NAMESPACE}.svc"  # the name the API server calls the webhook by
CHECK_SECONDS = 30.0
MANAGER = "gitmesh-inject-ca"  # the field manager of the caBundle
_PATH = f"/apis/admissionregistration.k8s.io/v1/mutatingwebhookconfigurations/{webhook.NAME}"
# A sidecar's xDS client certificate is shown only when it (re)connects, and only while its pod
# exists: every stream is checked against the pod (serve.MeshPublisher.authorize), so a deleted
# pod's certificate opens nothing. Workload certificates (SDS) stay short-lived.
POD_CERT_LIFETIME = datetime.timedelta(days=365)


@dataclass(frozen=True)
class Injection:
    """``gitmesh run --inject-address``: where to serve the webhook, and what it injects."""

    address: tuple[str, int]
    config: patch.Config


def publisher(settings: Settings) -> Callable[[str], None] | None:
    """Writes the caBundle to the cluster the settings' object port writes to (None: no cluster)."""
    if not isinstance(settings.objects, KubeObjects):
        return None
    return bundle_writer(settings.objects.client)


def bundle_writer(client: Client) -> Callable[[str], None]:
    def publish(bundle: str) -> None:
        client.apply(_PATH, webhook.bundle_patch(bundle), MANAGER, force=True)

    return publish


def _now() -> datetime.datetime:
    return datetime.datetime.now(datetime.UTC)


class PodIdentities:
    """An injected pod's token -> its sidecar's xDS client certificate, for the token's
    ServiceAccount: the cluster reviews the token (audience gitmesh, bound to a pod), and the pod
    it is bound to must be there, with that UID and ServiceAccount."""

    def __init__(self, client: Client, mesh_ca: MeshCA) -> None:
        self._client = client
        self._ca = mesh_ca

    def issue(self, token: str) -> dict[str, str]:
        claim = identity.reviewed(review.token_review(self._client, token, [identity.AUDIENCE]))
        pod = review.pod(self._client, claim.identity.namespace, claim.pod_name)
        if problem := identity.pod_problem(pod, claim):
            raise identity.Refused(problem)
        state = self._ca.state
        issued = ca.issue(state.signing, state.trust_domain, claim.identity, _now(), POD_CERT_LIFETIME)
        log.info(
            "issued pod %s/%s its sidecar's certificate as %s",
            claim.identity.namespace,
            claim.pod_name,
            claim.identity,
        )
        return {"cert_pem": issued.cert_pem, "key_pem": issued.key_pem, "bundle_pem": "".join(state.bundle())}


class InjectWebhook:
    """``publish(bundle_pem)`` writes the caBundle (None: nobody to tell, outside a cluster);
    ``server_name`` is what the API server calls the webhook by."""

    def __init__(
        self,
        address: tuple[str, int],
        config: patch.Config,
        keeper: store.Keeper,
        publish: Callable[[str], None] | None,
        stopping: threading.Event,
        server_name: str = SERVER_NAME,
        client: Client | None = None,
    ) -> None:
        self._server_name = server_name
        self._keeper = keeper
        self._publish = publish
        self._stopping = stopping
        self._ca = MeshCA(store.load_or_create(keeper, _now()))
        self._issued = self._ca.certificate(SERVER_IDENTITY, _now(), self._server_name)
        self._published = ""
        issuer = PodIdentities(client, self._ca).issue if client is not None else None
        self._config = config
        self.server = webhook.WebhookServer(address, self._injected(), self._issued, issuer)
        self._thread = threading.Thread(target=self._keep, name="inject-ca", daemon=True)

    def start(self) -> None:
        self.server.start()
        self._thread.start()

    def stop(self) -> None:
        self._stopping.set()
        self.server.stop()

    def check(self) -> None:
        """Read the CA back, swap the certificate if it is due, publish the roots if they moved."""
        state = self._keeper.load()
        if state is not None and state != self._ca.state:
            self._ca.set_state(state)
        issued = self._ca.certificate(SERVER_IDENTITY, _now(), self._server_name)
        if issued != self._issued:
            self.server.set_certificate(issued)
            self._issued = issued
        bundle = "".join(self._ca.bundle())
        self.server.config = self._injected()
        if self._publish is not None and bundle != self._published:
            self._publish(bundle)
            self._published = bundle

    def _injected(self) -> patch.Config:
        """What pods are injected with: the CA's current roots, to trust gitmesh by."""
        return replace(self._config, ca_bundle="".join(self._ca.bundle()))

    def _keep(self) -> None:
        while True:
            try:
                self.check()
            except (GitmeshError, OSError) as e:  # the cluster may answer next time
                log.warning("injection webhook: keeping its certificate failed: %s", e)
            if self._stopping.wait(CHECK_SECONDS):
                return

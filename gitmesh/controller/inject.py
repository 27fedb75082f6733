"""The injection webhook in ``gitmesh run``: served with a certificate from the mesh CA, which is
renewed when due and reissued by a new signer; the webhook configuration's ``caBundle`` follows
the CA's roots (through a rotation, both roots are there)."""

from __future__ import annotations

import datetime
import logging
import threading
from collections.abc import Callable
from dataclasses import dataclass

from gitmesh.certs import store
from gitmesh.certs.authority import MeshCA
from gitmesh.cluster.kube import KubeObjects
from gitmesh.errors import GitmeshError
from gitmesh.inject import patch, webhook
from gitmesh.install.manifests import NAME, NAMESPACE
from gitmesh.kube.client import Client
from gitmesh.settings import Settings
from gitmesh.xds.bootstrap import SERVER_IDENTITY

log = logging.getLogger(__name__)

SERVER_NAME = f"{NAME}.{NAMESPACE}.svc"  # the name the API server calls the webhook by
CHECK_SECONDS = 30.0
MANAGER = "gitmesh-inject-ca"  # the field manager of the caBundle
_PATH = f"/apis/admissionregistration.k8s.io/v1/mutatingwebhookconfigurations/{webhook.NAME}"


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
    ) -> None:
        self._server_name = server_name
        self._keeper = keeper
        self._publish = publish
        self._stopping = stopping
        self._ca = MeshCA(store.load_or_create(keeper, _now()))
        self._issued = self._ca.certificate(SERVER_IDENTITY, _now(), self._server_name)
        self._published = ""
        self.server = webhook.WebhookServer(address, config, self._issued)
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
        if self._publish is not None and bundle != self._published:
            self._publish(bundle)
            self._published = bundle

    def _keep(self) -> None:
        while True:
            try:
                self.check()
            except (GitmeshError, OSError) as e:  # the cluster may answer next time
                log.warning("injection webhook: keeping its certificate failed: %s", e)
            if self._stopping.wait(CHECK_SECONDS):
                return

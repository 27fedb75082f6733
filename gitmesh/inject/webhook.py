"""The sidecar-injection admission webhook: AdmissionReview in, the pod's patch out (``review``,
pure), served over HTTPS with a certificate from the mesh CA (``WebhookServer``), and registered by
a MutatingWebhookConfiguration (``configuration``).

Two webhooks share the server. Pods in namespaces labelled ``gitmesh.dev/inject=enabled`` come to
``/inject`` and are injected unless annotated ``disabled``; there ``failurePolicy: Fail``, so such a
pod never starts outside the mesh. Pods of other namespaces come to ``/inject-opted-in`` and are
injected only when annotated ``enabled``; there ``failurePolicy: Ignore``, so gitmesh being down
never blocks them. Neither webhook sees gitmesh's own namespace or kube-system.

The same server answers ``POST /identity`` (``IDENTITY_PATH``): an injected pod's init container
sends its projected ServiceAccount token and gets its sidecar's xDS client certificate, when the
token proves the pod (``gitmesh.inject.identity``).
"""

from __future__ import annotations

import base64
import json
import logging
import os
import ssl
import tempfile
import threading
from collections.abc import Callable
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

from gitmesh.certs import ca
from gitmesh.errors import GitmeshError
from gitmesh.inject import identity, patch

log = logging.getLogger(__name__)

NAME = "gitmesh-inject"  # the MutatingWebhookConfiguration
PATHS = {"/inject": True, "/inject-opted-in": False}  # path -> injected unless the pod says otherwise
NEVER = ("kube-system", "gitmesh-system")  # namespaces neither webhook sees
MAX_BODY = 4 * 1024 * 1024  # an AdmissionReview of one pod is far smaller
IDENTITY_PATH = "/identity"
# A token -> the sidecar's certificate, key and the mesh's roots (PEM); identity.Refused says why not.
Issuer = Callable[[str], dict[str, str]]


def review(body: dict[str, Any], config: patch.Config, *, by_default: bool) -> dict[str, Any]:
    """The AdmissionReview answering ``body``: always allowed; with a patch when the pod is to be
    injected. A pod whose annotations are malformed is refused, with the reason."""
    request = body.get("request") or {}
    response: dict[str, Any] = {"uid": request.get("uid", ""), "allowed": True}
    obj = request.get("object")
    if request.get("operation") == "CREATE" and isinstance(obj, dict) and obj.get("kind") == "Pod":
        try:
            ops = patch.object_patch(obj, config, by_default=by_default)
        except ValueError as e:
            response["allowed"] = False
            response["status"] = {"code": 400, "message": f"gitmesh injection: {e}"}
            ops = []
        if ops:
            response["patchType"] = "JSONPatch"
            response["patch"] = base64.b64encode(json.dumps(ops).encode()).decode()
    return {"apiVersion": "admission.k8s.io/v1", "kind": "AdmissionReview", "response": response}


def configuration(client_config: dict[str, Any], ca_bundle: str = "") -> dict[str, Any]:
    """The MutatingWebhookConfiguration; ``client_config`` without its path (a ``service`` or a
    ``url``), ``ca_bundle`` the mesh's roots (PEM) that signed the serving certificate. Without one
    (``gitmesh install``), the controller adds it (``bundle_patch``), as its own field manager."""
    never = {"key": "kubernetes.io/metadata.name", "operator": "NotIn", "values": list(NEVER)}
    webhooks = []
    for path, by_default in PATHS.items():
        where = dict(client_config)
        if "url" in where:
            where["url"] = where["url"].rstrip("/") + path
        else:
            where["service"] = {**where["service"], "path": path}
        label = {
            "key": patch.INJECT,
            "operator": "In" if by_default else "NotIn",
            "values": ["enabled"],
        }
        webhooks.append(
            {
                "name": f"{path.strip('/')}.gitmesh.dev",
                "admissionReviewVersions": ["v1"],
                "sideEffects": "None",
                "failurePolicy": "Fail" if by_default else "Ignore",
                "reinvocationPolicy": "IfNeeded",
                "timeoutSeconds": 5,
                "clientConfig": {**where, **_bundle(ca_bundle)},
                "namespaceSelector": {"matchExpressions": [never, label]},
                "rules": [
                    {
                        "apiGroups": [""],
                        "apiVersions": ["v1"],
                        "operations": ["CREATE"],
                        "resources": ["pods"],
                        "scope": "Namespaced",
                    }
                ],
            }
        )
    return {
        "apiVersion": "admissionregistration.k8s.io/v1",
        "kind": "MutatingWebhookConfiguration",
        "metadata": {"name": NAME},
        "webhooks": webhooks,
    }


def _bundle(ca_bundle: str) -> dict[str, str]:
    return {"caBundle": base64.b64encode(ca_bundle.encode()).decode()} if ca_bundle else {}


def bundle_patch(ca_bundle: str) -> dict[str, Any]:
    """What keeps the configuration's ``caBundle`` current: a server-side apply of it alone."""
    return {
        "apiVersion": "admissionregistration.k8s.io/v1",
        "kind": "MutatingWebhookConfiguration",
        "metadata": {"name": NAME},
        "webhooks": [
            {"name": f"{path.strip('/')}.gitmesh.dev", "clientConfig": _bundle(ca_bundle)} for path in PATHS
        ],
    }


class WebhookServer:
    """Serves ``review`` over HTTPS on a thread; ``set_certificate`` swaps the serving certificate
    for the connections that follow (renewal, a new root), ``config`` may be replaced (the roots
    injected pods trust); ``issuer`` answers ``IDENTITY_PATH`` (None: not served)."""

    def __init__(
        self, address: tuple[str, int], config: patch.Config, issued: ca.Issued, issuer: Issuer | None = None
    ) -> None:
        self.config = config
        self._context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        self._context.minimum_version = ssl.TLSVersion.TLSv1_2
        self.set_certificate(issued)
        self._httpd = ThreadingHTTPServer(address, _handler(self, issuer))
        self._httpd.daemon_threads = True
        # The handshake happens in the request thread, not in accept(): a silent client blocks no other.
        self._httpd.socket = self._context.wrap_socket(
            self._httpd.socket, server_side=True, do_handshake_on_connect=False
        )
        self._thread = threading.Thread(target=self._httpd.serve_forever, name="inject-webhook", daemon=True)

    @property
    def port(self) -> int:
        return int(self._httpd.server_address[1])

    def set_certificate(self, issued: ca.Issued) -> None:
        # ssl loads keys from files only: a private file that lives for the call.
        with tempfile.TemporaryDirectory() as directory:
            path = os.path.join(directory, "serving.pem")
            fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
            with os.fdopen(fd, "w") as f:
                f.write(issued.key_pem + issued.cert_pem)
            self._context.load_cert_chain(path)

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        self._httpd.shutdown()
        self._httpd.server_close()


def _handler(server: WebhookServer, issuer: Issuer | None) -> type[BaseHTTPRequestHandler]:
    class Handler(BaseHTTPRequestHandler):
        def do_POST(self) -> None:
            path = self.path.partition("?")[0]
            by_default = PATHS.get(path)
            known = by_default is not None or (path == IDENTITY_PATH and issuer is not None)
            length = int(self.headers.get("Content-Length") or 0)
            if not known or not 0 < length <= MAX_BODY:
                self.send_error(400 if known else 404)
                return
            try:
                body = json.loads(self.rfile.read(length))
            except ValueError:
                self.send_error(400, "not JSON")
                return
            if by_default is not None:
                self._send(200, review(body, server.config, by_default=by_default))
                return
            assert issuer is not None
            token = body.get("token") if isinstance(body, dict) else None
            if not isinstance(token, str) or not token:
                self._send(400, {"error": 'expected {"token": ...}'})
                return
            try:
                self._send(200, issuer(token))
            except identity.Refused as e:
                log.warning("inject: identity refused to %s: %s", self.client_address[0], e)
                self._send(403, {"error": str(e)})
            except GitmeshError as e:  # the cluster did not answer: the init container asks again
                log.warning("inject: cannot check an identity now: %s", e)
                self._send(503, {"error": "cannot check the token now"})

        def _send(self, status: int, answer: dict[str, Any]) -> None:
            data = json.dumps(answer).encode()
            self.send_response(status)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            self.wfile.write(data)

        def log_message(self, format: str, *args: Any) -> None:
            log.debug("inject webhook: " + format, *args)

    return Handler

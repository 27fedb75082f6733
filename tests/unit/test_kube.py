"""The Kubernetes client's transport against a real HTTP server on loopback: what goes on the wire."""

from __future__ import annotations

import json
import threading
from collections.abc import Iterator
from datetime import UTC, datetime
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import kubernetes.client
import pytest

from gitmesh.controller.leader import KubeLeases, LeaseRecord
from gitmesh.kube.client import Client

Received = tuple[str, str, str, bytes]  # method, path, content type, body


@pytest.fixture
def server() -> Iterator[tuple[Client, list[Received]]]:
    received: list[Received] = []

    class Handler(BaseHTTPRequestHandler):
        def _answer(self) -> None:
            body = self.rfile.read(int(self.headers.get("Content-Length") or 0))
            received.append((self.command, self.path, self.headers.get("Content-Type", ""), body))
            reply = json.dumps({"metadata": {"resourceVersion": "7"}}).encode()
            self.send_response(201)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(reply)))
            self.end_headers()
            self.wfile.write(reply)

        do_POST = do_PUT = do_PATCH = _answer

        def log_message(self, *args: object) -> None:
            pass

    httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    thread = threading.Thread(target=httpd.serve_forever, daemon=True)
    thread.start()
    cfg = kubernetes.client.Configuration(host=f"http://127.0.0.1:{httpd.server_address[1]}")
    client = Client(kubernetes.client.ApiClient(cfg), "loopback")
    try:
        yield client, received
    finally:
        client.close()
        httpd.shutdown()
        httpd.server_close()
        thread.join()


def test_a_json_body_is_encoded_once(server: tuple[Client, list[Received]]) -> None:
    client, received = server
    body = {"apiVersion": "v1", "kind": "ConfigMap", "data": {"quote": 'a "b"'}}
    client.request("POST", "/api/v1/namespaces/x/configmaps", body=body)
    ((method, path, content_type, sent),) = received
    assert (method, path, content_type) == ("POST", "/api/v1/namespaces/x/configmaps", "application/json")
    assert json.loads(sent) == body  # an object, not a JSON string of one


def test_an_apply_sends_the_same_encoding_as_an_apply_patch(server: tuple[Client, list[Received]]) -> None:
    client, received = server
    body = {"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": "c"}}
    client.apply("/api/v1/namespaces/x/configmaps/c", body, "gitmesh", force=True)
    ((method, path, content_type, sent),) = received
    assert (method, content_type) == ("PATCH", "application/apply-patch+yaml")
    assert path.startswith("/api/v1/namespaces/x/configmaps/c?") and "force=true" in path
    assert json.loads(sent) == body


def test_a_lease_is_written_as_json(server: tuple[Client, list[Received]]) -> None:
    client, received = server
    leases = KubeLeases(client, "gitmesh-system", "gitmesh-leader")
    now = datetime(2026, 1, 1, tzinfo=UTC)
    assert leases.create(LeaseRecord("a", 15.0, now, now, 0)) == "7"
    ((method, _, content_type, sent),) = received
    assert (method, content_type) == ("POST", "application/json")
    lease = json.loads(sent)
    assert (lease["kind"], lease["spec"]["holderIdentity"]) == ("Lease", "a")

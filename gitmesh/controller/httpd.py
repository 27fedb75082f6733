"""The controller's HTTP port.

GET  /healthz                   200 while the process runs
GET  /readyz                    200 once every source has finished a first reconcile, else 503
GET  /metrics                   Prometheus metrics
GET  /status                    every source's record (conditions, revisions, history) as JSON
POST /hook                      a webhook (GitHub push, or the generic form); HMAC-SHA256 signed
POST /sources/NAME/reconcile    reconcile NAME now (what ``gitmesh reconcile NAME`` calls)
"""

from __future__ import annotations

import json
import logging
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

from prometheus_client import CONTENT_TYPE_LATEST

from gitmesh.controller.metrics import Metrics
from gitmesh.controller.schedule import Controller
from gitmesh.errors import ConfigError
from gitmesh.sync import webhook

log = logging.getLogger("gitmesh.controller.http")

MAX_BODY = 1 << 20  # GitHub caps push payloads at 25 MB, but a mesh repo's pushes are small


class ControllerPort:
    def __init__(self, address: str, controller: Controller, metrics: Metrics, secret: bytes | None) -> None:
        host, _, port = address.rpartition(":")
        if not port.isdigit():
            raise ConfigError(f"the HTTP address {address!r} is not HOST:PORT")
        self.controller = controller
        self.metrics = metrics
        self.secret = secret
        port_owner = self

        class Handler(_Handler):
            owner = port_owner

        try:
            self.server = ThreadingHTTPServer((host or "127.0.0.1", int(port)), Handler)
        except OSError as e:
            raise ConfigError(f"cannot serve HTTP on {address}: {e.strerror}") from e
        self.server.daemon_threads = True
        self.address = ":".join(map(str, self.server.socket.getsockname()[:2]))
        self._thread = threading.Thread(target=self.server.serve_forever, name="http", daemon=True)

    def start(self) -> None:
        self._thread.start()
        log.info("controller HTTP port on %s", self.address)

    def stop(self) -> None:
        self.server.shutdown()
        self.server.server_close()


class _Handler(BaseHTTPRequestHandler):
    owner: ControllerPort

    def do_GET(self) -> None:
        reconciler = self.owner.controller.reconciler
        if self.path == "/healthz":
            self._send(200, b"ok\n")
        elif self.path == "/readyz":
            waiting = reconciler.not_ready()
            if waiting:
                self._send(503, f"waiting for a first reconcile of: {', '.join(waiting)}\n".encode())
            else:
                self._send(200, b"ok\n")
        elif self.path == "/metrics":
            self._send(200, self.owner.metrics.exposition(), CONTENT_TYPE_LATEST)
        elif self.path == "/status":
            self._json(200, {"sources": [r.to_json() for r in reconciler.records()]})
        else:
            self._send(404, b"not found\n")

    def do_POST(self) -> None:
        parts = self.path.strip("/").split("/")
        if self.path == "/hook":
            self._hook()
        elif len(parts) == 3 and parts[0] == "sources" and parts[2] == "reconcile":
            self._read_body()
            if self.owner.controller.trigger(parts[1], "manual"):
                self._json(202, {"triggered": [parts[1]]})
            else:
                self._json(404, {"error": f"no source {parts[1]!r}"})
        else:
            self._send(404, b"not found\n")

    def _hook(self) -> None:
        metrics = self.owner.metrics.webhooks
        body = self._read_body()
        if body is None:
            return
        if self.owner.secret is None:
            metrics.labels("rejected").inc()
            self._json(404, {"error": "no webhook secret is configured: webhooks are off"})
            return
        if not webhook.verify(self.owner.secret, body, self.headers.get(webhook.SIGNATURE_HEADER)):
            metrics.labels("rejected").inc()
            log.warning("webhook with a missing or wrong signature from %s", self.client_address[0])
            self._json(401, {"error": f"missing or wrong {webhook.SIGNATURE_HEADER}"})
            return
        try:
            push = webhook.parse(self.headers.get(webhook.EVENT_HEADER), body)
        except webhook.BadEvent as e:
            metrics.labels("invalid").inc()
            self._json(400, {"error": str(e)})
            return
        controller = self.owner.controller
        names = (
            sorted(n for n, s in controller.reconciler.sources.items() if webhook.concerns(push, s))
            if push
            else []
        )
        for name in names:
            controller.trigger(name, "webhook")
        metrics.labels("accepted" if names else "ignored").inc()
        self._json(202 if names else 200, {"triggered": names})

    def _read_body(self) -> bytes | None:
        length = int(self.headers.get("Content-Length") or 0)
        if length > MAX_BODY:
            self._json(413, {"error": f"the body is larger than {MAX_BODY} bytes"})
            return None
        return self.rfile.read(length)

    def _json(self, status: int, data: Any) -> None:
        self._send(status, json.dumps(data, indent=2).encode() + b"\n", "application/json")

    def _send(self, status: int, body: bytes, content_type: str = "text/plain; charset=utf-8") -> None:
        self.send_response(status)
        self.send_header("Content-Type", content_type)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, format: str, *args: object) -> None:
        log.debug("%s %s", self.address_string(), format % args)

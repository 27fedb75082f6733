"""Git over HTTP for tests: ``git http-backend`` (git's own smart-HTTP CGI) behind a small server.

``GitHttpServer(root, credentials=("user", "pass"))`` serves every repository under ``root``
at ``http://127.0.0.1:PORT/<name>`` (or on ``host``), asking for basic authentication when credentials are
given; with ``tls=(certificate, key)`` at ``https://``. ``stop()`` takes it down (the remote
is unreachable), ``start()`` brings it back on the same port.
"""

from __future__ import annotations

import base64
import http.server
import os
import shutil
import ssl
import subprocess
import threading
from pathlib import Path


class GitHttpServer:
    def __init__(
        self,
        root: Path,
        credentials: tuple[str, str] | None = None,
        tls: tuple[Path, Path] | None = None,
        host: str = "127.0.0.1",
    ) -> None:
        self.root = root
        self.host = host
        self.credentials = credentials
        self.tls = tls
        self.port = 0
        self.requests = 0
        self._server: http.server.ThreadingHTTPServer | None = None

    def url(self, name: str) -> str:
        return f"{'https' if self.tls else 'http'}://{self.host}:{self.port}/{name}"

    def start(self) -> GitHttpServer:
        owner = self

        class Handler(http.server.BaseHTTPRequestHandler):
            def do_GET(self) -> None:
                owner.requests += 1
                if owner.credentials and not self._authorised():
                    self.send_response(401)
                    self.send_header("WWW-Authenticate", 'Basic realm="git"')
                    self.send_header("Content-Length", "0")
                    self.end_headers()
                    return
                self._cgi()

            do_POST = do_GET

            def _authorised(self) -> bool:
                assert owner.credentials is not None
                user, password = owner.credentials
                want = "Basic " + base64.b64encode(f"{user}:{password}".encode()).decode()
                return self.headers.get("Authorization") == want

            def _cgi(self) -> None:
                path, _, query = self.path.partition("?")
                body = self.rfile.read(int(self.headers.get("Content-Length") or 0))
                env = {
                    "PATH": os.environ["PATH"],
                    "GIT_PROJECT_ROOT": str(owner.root),
                    "GIT_HTTP_EXPORT_ALL": "1",
                    "REQUEST_METHOD": self.command,
                    "PATH_INFO": path,
                    "QUERY_STRING": query,
                    "CONTENT_TYPE": self.headers.get("Content-Type", ""),
                    "CONTENT_LENGTH": str(len(body)),
                    "REMOTE_ADDR": "127.0.0.1",
                }
                if self.headers.get("Content-Encoding"):
                    env["HTTP_CONTENT_ENCODING"] = self.headers["Content-Encoding"]
                git = shutil.which("git") or "git"
                result = subprocess.run([git, "http-backend"], input=body, env=env, capture_output=True)
                head, _, payload = result.stdout.partition(b"\r\n\r\n")
                status = 200
                headers = []
                for line in head.decode().split("\r\n"):
                    name, _, value = line.partition(":")
                    if name.lower() == "status":
                        status = int(value.split()[0])
                    elif name:
                        headers.append((name, value.strip()))
                self.send_response(status)
                for name, value in headers:
                    self.send_header(name, value)
                self.send_header("Content-Length", str(len(payload)))
                self.end_headers()
                self.wfile.write(payload)

            def log_message(self, format: str, *args: object) -> None:
                pass

        self._server = http.server.ThreadingHTTPServer((self.host, self.port), Handler)
        self._server.daemon_threads = True
        self.port = int(self._server.server_address[1])
        if self.tls:
            context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
            context.load_cert_chain(*self.tls)
            self._server.socket = context.wrap_socket(self._server.socket, server_side=True)
        threading.Thread(target=self._server.serve_forever, daemon=True).start()
        return self

    def stop(self) -> None:
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()
            self._server = None

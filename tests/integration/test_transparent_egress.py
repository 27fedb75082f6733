"""A pod's egress with the real Envoy and real capture, on the host: in a network namespace of
the test's own, the init container's iptables rules (``gitmesh.inject.capture``) send what an
"app" connects to into the sidecar's transparent outbound listener, which finds the original
destination (``SO_ORIGINAL_DST``) and lets out only what an Egress allows: TCP by address range
and port, on to that destination; HTTP by Host. The rest is closed, or passes through with
MeshConfig enableEgress. And inbound, a plaintext IngressBackend and a request rate limit on the
pod's port (a rule of the test stands in for the inbound capture, which sees only traffic from
other hosts). Every address is on the namespace's own loopback."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from dataclasses import replace
from pathlib import Path

import pytest

from gitmesh.demo import eventually
from gitmesh.inject.capture import Capture, rules
from gitmesh.mesh.state import ConnectionLimits, EgressRule, IngressRule, RateLimit, ServiceRef
from gitmesh.xds.translate import Translator
from tests.xds.envoy import ENVOY
from tests.xds.test_translate import as_static_bootstrap
from tests.xds.test_transparent import BUYER, V1_PROXY, cluster_mesh

pytestmark = pytest.mark.integration

PROXY_UID = 1337
SERVER = """
import http.server, sys
class Answer(http.server.BaseHTTPRequestHandler):
    def do_GET(self):
        body = f"external {self.server.server_address[0]}:{self.server.server_address[1]}".encode()
        self.send_response(200)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)
    def log_message(self, *args):
        pass
http.server.ThreadingHTTPServer((sys.argv[1], int(sys.argv[2])), Answer).serve_forever()
"""
CLIENT = """
import http.client, sys, urllib.error, urllib.request
source = sys.argv[2] if len(sys.argv) > 2 else ""
handler = urllib.request.HTTPHandler()
if source:  # the client's own address
    class From(http.client.HTTPConnection):
        def __init__(self, *args, **kwargs):
            super().__init__(*args, source_address=(source, 0), **kwargs)
    handler.http_open = lambda req: handler.do_open(From, req)
try:
    with urllib.request.build_opener(handler).open(sys.argv[1], timeout=5) as r:
        print(r.status, r.read().decode())
except urllib.error.HTTPError as e:
    print(e.code, e.read().decode())
except Exception as e:
    print("failed", type(e).__name__)
"""


@pytest.fixture
def netns() -> Iterator[str]:
    """A network namespace with only its loopback, and the pod's capture rules in it."""
    name = f"gitmesh-egress-{os.getpid()}"
    subprocess.run(["ip", "netns", "add", name], check=True)
    try:
        subprocess.run(["ip", "netns", "exec", name, "ip", "link", "set", "lo", "up"], check=True)
        capture = Capture(
            proxy_uid=PROXY_UID, inbound_port=BUYER.inbound_port, outbound_port=BUYER.outbound_port
        )
        subprocess.run(
            ["ip", "netns", "exec", name, "iptables-restore", "--noflush"],
            input=rules(capture),
            text=True,
            check=True,
        )
        yield name
    finally:
        subprocess.run(["ip", "netns", "del", name], check=False)


@pytest.fixture
def readable() -> Iterator[Path]:
    """A folder the proxy's user can read (pytest's own are the test user's alone)."""
    path = Path(tempfile.mkdtemp(prefix="gitmesh-egress-"))
    path.chmod(0o755)
    yield path
    shutil.rmtree(path, ignore_errors=True)


def _servers(netns: str, workdir: Path, addresses: list[tuple[str, int]]) -> list[subprocess.Popen[bytes]]:
    script = workdir / "server.py"
    script.write_text(SERVER)
    return [
        subprocess.Popen(["ip", "netns", "exec", netns, sys.executable, str(script), host, str(port)])
        for host, port in addresses
    ]


def _fetch(netns: str, workdir: Path, url: str, source: str = "") -> str:
    """What an app of the pod (any user but the proxy's: captured) gets from ``url``, calling from
    ``source`` when given."""
    script = workdir / "client.py"
    script.write_text(CLIENT)
    done = subprocess.run(
        ["ip", "netns", "exec", netns, sys.executable, str(script), url, *([source] if source else [])],
        capture_output=True,
        text=True,
        timeout=30,
    )
    return done.stdout.strip()


def _sidecar(netns: str, workdir: Path, config: dict[str, object]) -> subprocess.Popen[bytes]:
    path = workdir / "sidecar.json"
    path.write_text(json.dumps(config))
    path.chmod(0o644)
    run_as = ["setpriv", f"--reuid={PROXY_UID}", f"--regid={PROXY_UID}", "--clear-groups"]
    argv = [*run_as, ENVOY, "-c", str(path), "--disable-hot-restart", "-l", "warning"]
    with (workdir / "sidecar.log").open("wb") as log:
        return subprocess.Popen(["ip", "netns", "exec", netns, *argv], stdout=log, stderr=subprocess.STDOUT)


def _listening(netns: str, port: int) -> bool:
    listed = subprocess.run(
        ["ip", "netns", "exec", netns, "ss", "-Hltn"], capture_output=True, text=True
    ).stdout
    return f":{port} " in listed


def test_a_pods_egress_by_range_and_port_and_by_host_and_nothing_else(netns: str, readable: Path) -> None:
    allowed, other = ("127.0.0.2", 5432), ("127.0.0.3", 5432)
    web = ("127.0.0.4", 8081)
    egress = (
        EgressRule(BUYER.identity, "", 5432, "tcp", ranges=("127.0.0.2/32",)),
        EgressRule(BUYER.identity, web[0], web[1], "http"),
    )
    servers = _servers(netns, readable, [allowed, other, web, ("127.0.0.5", 9000)])
    try:
        for open_ in (False, True):
            mesh = replace(cluster_mesh(), egress=egress, egress_open=open_)
            sidecar = _sidecar(netns, readable, as_static_bootstrap(Translator(mesh).resources(BUYER), BUYER))
            try:
                eventually(lambda: _listening(netns, BUYER.outbound_port), bool, "the sidecar listening", 30)
                # TCP egress: to its range and port, on to where it was sent (HTTP carried as bytes).
                got = eventually(
                    lambda: _fetch(netns, readable, "http://127.0.0.2:5432/"),
                    lambda r: r.startswith("200"),
                    "TCP egress to the range",
                    20,
                )
                assert got == "200 external 127.0.0.2:5432"
                # HTTP egress: by its Host, to the host the policy names.
                assert _fetch(netns, readable, "http://127.0.0.4:8081/") == "200 external 127.0.0.4:8081"
                if not open_:
                    # Same port, another address; and an address and port no Egress names: closed.
                    assert _fetch(netns, readable, "http://127.0.0.3:5432/").startswith("failed")
                    assert _fetch(netns, readable, "http://127.0.0.5:9000/").startswith("failed")
                else:
                    # enableEgress: what no Egress names goes on to where it was sent.
                    assert _fetch(netns, readable, "http://127.0.0.3:5432/") == "200 external 127.0.0.3:5432"
                    assert _fetch(netns, readable, "http://127.0.0.5:9000/") == "200 external 127.0.0.5:9000"
            finally:
                sidecar.terminate()
                sidecar.wait(10)
                deadline = time.monotonic() + 10
                while _listening(netns, BUYER.outbound_port) and time.monotonic() < deadline:
                    time.sleep(0.1)
    finally:
        for server in servers:
            server.terminate()
            server.wait(10)


def test_a_pods_plaintext_ingress_port_answers_its_range_within_its_rate(netns: str, readable: Path) -> None:
    app = ("127.0.0.2", 8080)  # the pod's port 8080, served to the mesh by bookstore-v1
    # What the inbound capture does with a connection from another host, for this namespace's own.
    rule = ["-p", "tcp", "--dport", "8080", "-m", "owner", "!", "--uid-owner", str(PROXY_UID)]
    redirect = ["-j", "REDIRECT", "--to-ports", str(V1_PROXY.inbound_port)]
    subprocess.run(
        ["ip", "netns", "exec", netns, "iptables", "-t", "nat", "-I", "OUTPUT", "1", *rule, *redirect],
        check=True,
    )
    v1 = ServiceRef("bookstore", "bookstore-v1")
    mesh = replace(
        cluster_mesh(),
        ingress=(IngressRule(v1, 8080, (), False, ("127.0.0.1/32",)),),
        limits=(ConnectionLimits(v1, request_rate=RateLimit(2, 3600)),),
    )
    servers = _servers(netns, readable, [app])
    sidecar = _sidecar(netns, readable, as_static_bootstrap(Translator(mesh).resources(V1_PROXY), V1_PROXY))
    try:
        eventually(lambda: _listening(netns, V1_PROXY.inbound_port), bool, "the sidecar listening", 30)
        url = "http://127.0.0.2:8080/"
        # Another address than the ingress's: closed, and it spends none of the bucket.
        assert _fetch(netns, readable, url, source="127.0.0.9").startswith("failed")
        # The ingress's address: on to the app at the address it was sent to, twice; then 429.
        first = eventually(lambda: _fetch(netns, readable, url), lambda r: r.startswith("200"), "ingress", 20)
        assert first == "200 external 127.0.0.2:8080"
        assert _fetch(netns, readable, url) == "200 external 127.0.0.2:8080"
        assert _fetch(netns, readable, url).startswith("429")
    finally:
        sidecar.terminate()
        sidecar.wait(10)
        for server in servers:
            server.terminate()
            server.wait(10)

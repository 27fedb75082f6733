"""Wildcard egress with the real Envoy: a caller's sidecar reaches any name under ``*.example.test``
by HTTP Host and by TLS server name, each name resolved as it is asked for (Envoy's dynamic
forward proxy) by a test resolver on loopback; other names, and other callers, get nowhere."""

from __future__ import annotations

import http.client
import http.server
import json
import socket
import ssl
import subprocess
import threading
from collections.abc import Iterator
from dataclasses import replace
from pathlib import Path
from typing import Any

import pytest

from gitmesh.demo import eventually, free_port
from gitmesh.mesh.state import EgressRule
from gitmesh.xds.translate import Proxy, Translator
from tests.dns import LoopbackResolver
from tests.integration.test_policies_envoy import TlsServer
from tests.xds.envoy import ENVOY
from tests.xds.test_translate import BOOKBUYER, BOOKTHIEF, as_static_bootstrap, example

pytestmark = pytest.mark.integration


class _Answer(http.server.BaseHTTPRequestHandler):
    def do_GET(self) -> None:
        body = f"external for {self.headers['Host']}".encode()
        self.send_response(200)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *args: Any) -> None:
        pass


@pytest.fixture
def external() -> Iterator[int]:
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _Answer)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    yield server.server_address[1]
    server.shutdown()
    server.server_close()


def _sidecar(
    proxy: Proxy, rules: tuple[EgressRule, ...], resolver: int, workdir: Path, *, open_: bool = False
) -> Iterator[Proxy]:
    """Envoy running ``proxy``'s translation (as a static bootstrap) with the system resolver
    replaced by the test one, until the generator is closed."""
    proxy = replace(proxy, outbound_port=free_port(), inbound_port=free_port())
    mesh = replace(example(), egress=rules, egress_open=open_)
    config = as_static_bootstrap(Translator(mesh).resources(proxy), proxy)
    config["typed_dns_resolver_config"] = {
        "name": "envoy.network.dns_resolver.cares",
        "typed_config": {
            "@type": "type.googleapis.com/envoy.extensions.network.dns_resolver.cares.v3."
            "CaresDnsResolverConfig",
            "resolvers": [{"socket_address": {"address": "127.0.0.1", "port_value": resolver}}],
        },
    }
    path = workdir / f"{proxy.identity.name}.json"
    path.write_text(json.dumps(config))
    log = (workdir / f"{proxy.identity.name}.log").open("wb")
    envoy = subprocess.Popen(
        [ENVOY, "-c", str(path), "--use-dynamic-base-id", "-l", "warning"],
        stdout=log,
        stderr=subprocess.STDOUT,
    )
    try:
        eventually(
            lambda: socket.create_connection(("127.0.0.1", proxy.outbound_port), timeout=1).close() or True,
            bool,
            "the sidecar listening",
            30,
        )
        yield proxy
    finally:
        envoy.terminate()
        envoy.wait(10)
        log.close()


def _get(port: int, host: str) -> tuple[int, str]:
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=5)
    try:
        conn.request("GET", "/", headers={"Host": host})
        response = conn.getresponse()
        return response.status, response.read().decode()
    finally:
        conn.close()


def _tls(port: int, server_name: str) -> str:
    """What a TLS client asking for ``server_name`` reads through the sidecar ("" if refused)."""
    context = ssl.create_default_context()
    context.check_hostname = False  # the server's certificate is for localhost: SNI is what counts here
    context.verify_mode = ssl.CERT_NONE
    with socket.create_connection(("127.0.0.1", port), timeout=5) as raw:
        try:
            with context.wrap_socket(raw, server_hostname=server_name) as tls:
                return tls.recv(100).decode()
        except (ssl.SSLError, ConnectionResetError):
            return ""


def test_wildcard_egress_resolves_each_name_under_its_domain_for_its_source_only(
    external: int, tmp_path: Path
) -> None:
    tls_server = TlsServer(tmp_path)
    rules = (
        EgressRule(BOOKBUYER.identity, "*.example.test", external, "http"),
        EgressRule(BOOKBUYER.identity, "*.example.test", tls_server.port, "tls"),
    )
    with LoopbackResolver(("example.test",)) as resolver:
        buyer = _sidecar(BOOKBUYER, rules, resolver.port, tmp_path)
        thief = _sidecar(BOOKTHIEF, rules, resolver.port, tmp_path)
        try:
            port, thief_port = next(buyer).outbound_port, next(thief).outbound_port
            for name in ("books.example.test", "api.shop.example.test"):
                host = f"{name}:{external}"
                got = eventually(
                    lambda host=host: _get(port, host), lambda r: r[0] == 200, f"{host} reached", 20
                )  # type: ignore[misc]
                assert got == (200, f"external for {host}")
                assert name in resolver.asked  # resolved by the test resolver, as it was asked for
            # Not under the domain, or on another port: no virtual host, nothing resolved.
            assert _get(port, f"books.example.org:{external}")[0] == 404
            assert _get(port, f"books.example.test:{external + 1}")[0] == 404
            assert "books.example.org" not in resolver.asked
            # TLS by server name, passed through unread to the name's address on the policy's port.
            read = eventually(lambda: _tls(port, "shop.example.test"), bool, "TLS through", 20)
            assert read == "external over tls"
            assert "shop.example.test" in tls_server.names and "shop.example.test" in resolver.asked
            assert _tls(port, "shop.example.org") == ""
            # Another caller, which no Egress names: neither.
            assert _get(thief_port, f"books.example.test:{external}")[0] == 404
            assert _tls(thief_port, "shop.example.test") == ""
        finally:
            buyer.close()
            thief.close()
            tls_server.close()


def test_enable_egress_lets_a_process_sidecar_reach_any_host_by_name(external: int, tmp_path: Path) -> None:
    with LoopbackResolver(("example.test",)) as resolver:
        thief = _sidecar(BOOKTHIEF, (), resolver.port, tmp_path, open_=True)
        try:
            port = next(thief).outbound_port
            host = f"anything.example.test:{external}"
            got = eventually(lambda: _get(port, host), lambda r: r[0] == 200, "any host reached", 20)
            assert got == (200, f"external for {host}")
            # A name the resolver does not know: Envoy's forward proxy answers for it.
            assert _get(port, f"nowhere.example.org:{external}") == (503, "DNS resolution failure")
            assert "nowhere.example.org" in resolver.asked
        finally:
            thief.close()

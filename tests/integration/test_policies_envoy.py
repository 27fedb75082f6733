"""Every traffic policy with the real Envoy and real traffic: each is committed to the bookstore's
Git repo, applied, served over ADS, and seen in what the apps' requests get back and in the
sidecars' own counters."""

from __future__ import annotations

import concurrent.futures
import datetime
import http.client
import re
import socket
import ssl
import subprocess
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from gitmesh import demo as demo_mod
from gitmesh.demo import App, Demo, call, eventually
from tests import bookstore

pytestmark = pytest.mark.integration

OSM_POLICY = "policy.openservicemesh.io/v1alpha1"


@pytest.fixture
def demo(tmp_path: Path) -> Iterator[Demo]:
    with bookstore.running(tmp_path) as d:
        yield d


def commit(d: Demo, namespace: str, *objects: dict[str, Any]) -> None:
    """The policies into the repo as ``<namespace>/policy.yaml``, committed and applied."""
    path = d.repo / demo_mod.MESH_PATH / namespace / "policy.yaml"
    path.write_text(yaml.safe_dump_all(objects, sort_keys=False))
    git = ["git", "-c", "user.name=t", "-c", "user.email=t@example.com", "-C", str(d.repo)]
    subprocess.run([*git, "add", "-A"], check=True)
    subprocess.run([*git, "commit", "-q", "-m", f"policy in {namespace}"], check=True)
    d.applied = d.apply()


def obj(api_version: str, kind: str, namespace: str, spec: dict[str, Any]) -> dict[str, Any]:
    return {
        "apiVersion": api_version,
        "kind": kind,
        "metadata": {"name": kind.lower(), "namespace": namespace},
        "spec": spec,
    }


def stat(d: Demo, sidecar: str, name: str) -> int:
    """One counter of a sidecar (0 before Envoy has it)."""
    found = re.search(rf"^{re.escape(name)}: (\d+)$", d.sidecars[sidecar].admin("/stats"), re.M)
    return int(found.group(1)) if found else 0


def configured(d: Demo, sidecar: str, text: str) -> None:
    """Wait until the sidecar's configuration holds ``text``: the policy has reached it. Not a
    filter's name: the dump lists every extension the Envoy build has (node.extensions)."""
    eventually(lambda: d.sidecars[sidecar].admin("/config_dump"), lambda t: text in t, f"{text} in {sidecar}")


def buy_v1(d: Demo) -> tuple[int, str]:
    """bookbuyer -> bookstore-v1 directly (by its own service name), as bookbuyer may."""
    return call(d.proxies["bookbuyer"].outbound_port, "bookstore-v1.bookstore:14001", "/books-bought")


def test_a_retry_turns_a_flaky_upstream_into_success(demo: Demo) -> None:
    for version in ("bookstore-v1", "bookstore-v2"):
        app = demo.apps[version]
        assert isinstance(app, App)
        app.error_rate = 0.5
    before = sum(demo.buy()[0] == 200 for _ in range(100))
    assert 35 <= before <= 65  # half fail: each version fails every other request
    commit(
        demo,
        "bookbuyer",
        obj(
            OSM_POLICY,
            "Retry",
            "bookbuyer",
            {
                "source": {"kind": "ServiceAccount", "name": "bookbuyer", "namespace": "bookbuyer"},
                "destinations": [{"kind": "Service", "name": "bookstore", "namespace": "bookstore"}],
                "retryPolicy": {
                    "retryOn": "5xx",
                    "perTryTimeout": "2s",
                    "numRetries": 3,
                    "retryBackoffBaseInterval": "10ms",
                },
            },
        ),
    )
    configured(demo, "bookbuyer", '"retry_on": "5xx"')
    after = sum(demo.buy()[0] == 200 for _ in range(200))
    assert after / 200 >= 0.99, after
    retried = sum(
        stat(demo, "bookbuyer", f"cluster.bookstore/{v}|14001.upstream_rq_retry")
        for v in ("bookstore-v1", "bookstore-v2")
    )
    assert retried >= 200 - after + 50  # about one retry for every other request
    # bookthief has no retry policy (and is refused anyway): its routes stay the shared ones.
    assert '"retry_on"' not in demo.sidecars["bookthief"].admin("/config_dump")


def test_a_circuit_breaker_sheds_with_503_and_envoy_counts_it(demo: Demo) -> None:
    app = demo.apps["bookstore-v1"]
    assert isinstance(app, App)
    app.delay = 0.5  # each request holds the one connection allowed for half a second
    commit(
        demo,
        "bookstore",
        obj(
            OSM_POLICY,
            "UpstreamTrafficSetting",
            "bookstore",
            {
                "host": "bookstore-v1",
                "connectionSettings": {
                    "tcp": {"maxConnections": 1},
                    "http": {"maxRequests": 1, "maxPendingRequests": 1},
                },
            },
        ),
    )
    configured(demo, "bookbuyer", '"max_pending_requests": 1')
    with concurrent.futures.ThreadPoolExecutor(8) as pool:
        results = list(pool.map(lambda _: buy_v1(demo), range(8)))
    statuses = sorted(status for status, _ in results)
    shed = statuses.count(503)
    assert shed >= 1 and statuses.count(200) >= 1, statuses
    assert shed + statuses.count(200) == 8, statuses
    overflow = stat(demo, "bookbuyer", "cluster.bookstore/bookstore-v1|14001.upstream_rq_pending_overflow")
    assert overflow == shed


def test_fault_injection_aborts_and_delays_the_requests_of_its_source(demo: Demo) -> None:
    fault: dict[str, Any] = {
        "destination": {"name": "bookstore", "namespace": "bookstore"},
        "source": {"name": "bookbuyer", "namespace": "bookbuyer"},
        "abort": {"percent": 100, "status": 418},
    }
    commit(demo, "bookstore", obj("gitmesh.dev/v1alpha1", "FaultInjection", "bookstore", fault))
    eventually(demo.buy, lambda r: r[0] == 418, "the abort")
    assert [demo.buy()[0] for _ in range(20)] == [418] * 20
    assert stat(demo, "bookbuyer", "http.outbound.fault.aborts_injected") >= 21
    assert buy_v1(demo)[0] == 200  # another destination of the same caller is not faulted

    del fault["abort"]
    fault["delay"] = {"percent": 100, "duration": "400ms"}
    commit(demo, "bookstore", obj("gitmesh.dev/v1alpha1", "FaultInjection", "bookstore", fault))
    eventually(demo.buy, lambda r: r[0] == 200, "the abort gone")
    delays = stat(demo, "bookbuyer", "http.outbound.fault.delays_injected")
    started = time.monotonic()
    status, _ = demo.buy()
    # Envoy starts the delay's timer from its loop's cached time, which can lag a few milliseconds.
    assert status == 200 and time.monotonic() - started >= 0.35
    assert stat(demo, "bookbuyer", "http.outbound.fault.delays_injected") == delays + 1


def test_http_egress_reaches_an_external_host_from_its_source_only(demo: Demo) -> None:
    external = App("external")  # outside the mesh: no sidecar, no Service
    try:
        host = f"localhost:{external.port}"

        def reach(caller: str) -> tuple[int, str]:
            return call(demo.proxies[caller].outbound_port, host, "/")

        assert reach("bookbuyer")[0] == 404  # egress is off: no route leaves the mesh
        rule: dict[str, Any] = {
            "sources": [{"kind": "ServiceAccount", "name": "bookbuyer", "namespace": "bookbuyer"}],
            "hosts": ["localhost"],
            "ports": [{"number": external.port, "protocol": "http"}],
        }
        commit(demo, "bookbuyer", obj(OSM_POLICY, "Egress", "bookbuyer", rule))
        eventually(lambda: reach("bookbuyer"), lambda r: r == (200, "external"), "egress allowed")
        assert reach("bookthief")[0] == 404
        assert demo.buy()[0] == 200  # the mesh routes are still there

        # Narrowed to an HTTPRouteGroup's matches: only those requests leave the mesh.
        group = {
            "apiVersion": "specs.smi-spec.io/v1alpha4",
            "kind": "HTTPRouteGroup",
            "metadata": {"name": "external-api", "namespace": "bookbuyer"},
            "spec": {"matches": [{"name": "books", "pathRegex": "/books", "methods": ["GET"]}]},
        }
        rule["matches"] = [
            {"apiGroup": "specs.smi-spec.io/v1alpha4", "kind": "HTTPRouteGroup", "name": "external-api"}
        ]
        commit(demo, "bookbuyer", group, obj(OSM_POLICY, "Egress", "bookbuyer", rule))
        eventually(lambda: reach("bookbuyer"), lambda r: r[0] == 404, "egress narrowed")
        assert call(demo.proxies["bookbuyer"].outbound_port, host, "/books/1") == (200, "external")
    finally:
        external.close()


class TlsServer:
    """An "external" TLS server on 127.0.0.1 with a certificate for localhost, which writes its
    greeting to every client and closes."""

    def __init__(self, workdir: Path) -> None:
        key = ec.generate_private_key(ec.SECP256R1())
        name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "localhost")])
        now = datetime.datetime.now(datetime.UTC)
        cert = (
            x509.CertificateBuilder()
            .subject_name(name)
            .issuer_name(name)
            .public_key(key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(now - datetime.timedelta(minutes=1))
            .not_valid_after(now + datetime.timedelta(hours=1))
            .add_extension(x509.SubjectAlternativeName([x509.DNSName("localhost")]), critical=False)
            .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
            .sign(key, hashes.SHA256())
        )
        self.cert = workdir / "external.crt"
        self.cert.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
        key_file = workdir / "external.key"
        key_file.write_bytes(
            key.private_bytes(
                serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
            )
        )
        context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        context.load_cert_chain(self.cert, key_file)
        self.sock = socket.create_server(("127.0.0.1", 0))
        self.port = int(self.sock.getsockname()[1])
        self.names: list[str | None] = []  # the server name each client asked for

        def record(_sock: ssl.SSLObject, name: str | None, _ctx: ssl.SSLContext) -> None:
            self.names.append(name)

        context.sni_callback = record

        def serve() -> None:
            while True:
                try:
                    conn, _ = self.sock.accept()
                except OSError:
                    return
                try:
                    with context.wrap_socket(conn, server_side=True) as tls:
                        tls.sendall(b"external over tls")
                except (OSError, ssl.SSLError):
                    conn.close()

        threading.Thread(target=serve, daemon=True).start()

    def close(self) -> None:
        self.sock.close()


def tls_through(port: int, cafile: Path) -> str:
    """What a TLS client reads from ``localhost`` through the sidecar at ``port`` ("" if refused)."""
    context = ssl.create_default_context(cafile=str(cafile))
    with socket.create_connection(("127.0.0.1", port), timeout=5) as raw:
        try:
            with context.wrap_socket(raw, server_hostname="localhost") as tls:
                return tls.recv(100).decode()
        except (ssl.SSLError, ConnectionResetError):
            return ""


def test_tls_egress_passes_a_server_name_through_for_its_source_only(demo: Demo, tmp_path: Path) -> None:
    external = TlsServer(tmp_path)
    try:
        assert tls_through(demo.proxies["bookbuyer"].outbound_port, external.cert) == ""
        rule = {
            "sources": [{"kind": "ServiceAccount", "name": "bookbuyer", "namespace": "bookbuyer"}],
            "hosts": ["localhost"],
            "ports": [{"number": external.port, "protocol": "tls"}],
        }
        commit(demo, "bookbuyer", obj(OSM_POLICY, "Egress", "bookbuyer", rule))
        eventually(
            lambda: tls_through(demo.proxies["bookbuyer"].outbound_port, external.cert),
            lambda text: text == "external over tls",
            "TLS egress allowed",
        )
        assert external.names[-1] == "localhost"  # the caller's own TLS, end to end
        assert tls_through(demo.proxies["bookthief"].outbound_port, external.cert) == ""
        assert demo.buy()[0] == 200  # plain HTTP on the same listener still reaches the mesh
    finally:
        external.close()


def restock(d: Demo, caller: str) -> tuple[int, str]:
    """``caller``'s app POSTs /restock-books to the warehouse, as the bookstore may by its TrafficTarget."""
    port = d.proxies[caller].outbound_port
    return call(port, "bookwarehouse.bookwarehouse:14001", "/restock-books", method="POST")


def test_an_ingress_only_backend_answers_its_ingress_and_refuses_the_mesh(demo: Demo) -> None:
    assert restock(demo, "bookstore-v1") == (200, "bookwarehouse")  # a TrafficTarget allows it
    assert restock(demo, "bookthief")[0] == 403  # no TrafficTarget: its sidecar refuses the warehouse
    warehouse = demo.proxies["bookwarehouse"]
    spec = {
        # The backend port is the app's own (the Service's target port), as OSM reads it.
        "backends": [{"name": "bookwarehouse", "port": {"number": warehouse.app_port, "protocol": "https"}}],
        "sources": [{"kind": "ServiceAccount", "name": "bookthief", "namespace": "bookthief"}],
    }
    commit(demo, "bookwarehouse", obj(OSM_POLICY, "IngressBackend", "bookwarehouse", spec))
    # bookthief stands in for the ingress: its certificate proves the identity the policy names.
    eventually(lambda: restock(demo, "bookthief"), lambda r: r == (200, "bookwarehouse"), "ingress admitted")
    # Refused: a connection opened since is closed by the listener's RBAC (the caller's sidecar
    # answers 503); one opened before gets the route's RBAC answer, 403.
    refused = [restock(demo, "bookstore-v1") for _ in range(5)]
    assert all(status in (403, 503) and body != "bookwarehouse" for status, body in refused), refused
    denied = stat(demo, "bookwarehouse", "inbound_callers.rbac.denied") + stat(
        demo, "bookwarehouse", "http.inbound.rbac.denied"
    )
    assert denied >= 5


def test_local_rate_limits_refuse_requests_and_connections_past_the_bucket(demo: Demo) -> None:
    requests = {
        "host": "bookstore-v1",
        "rateLimit": {"local": {"http": {"requests": 3, "unit": "hour", "responseStatusCode": 503}}},
    }
    connections = {"host": "mysql-v1", "rateLimit": {"local": {"tcp": {"connections": 2, "unit": "hour"}}}}
    commit(demo, "bookstore", obj(OSM_POLICY, "UpstreamTrafficSetting", "bookstore", requests))
    commit(demo, "bookwarehouse", obj(OSM_POLICY, "UpstreamTrafficSetting", "bookwarehouse", connections))
    for sidecar in ("bookstore-v1", "mysql-v1"):
        configured(demo, sidecar, '"stat_prefix": "inbound_rate"')
    statuses = [buy_v1(demo)[0] for _ in range(6)]
    assert statuses == [200, 200, 200, 503, 503, 503]  # 3 an hour; the status the policy names
    assert stat(demo, "bookstore-v1", "inbound_rate.http_local_rate_limit.rate_limited") == 3
    # mysql-v1 takes 2 connections an hour and closes the rest unanswered; mysql-v2 has no limit.
    answers = [demo.query() for _ in range(20)]
    assert answers.count("mysql-v1") == 2, answers
    refused = answers.count("")
    assert refused >= 1 and refused + 2 + answers.count("mysql-v2") == 20, answers
    assert stat(demo, "mysql-v1", "local_rate_limit.inbound_rate.rate_limited") == refused


def test_a_paths_own_rate_limit_leaves_the_other_paths_alone(demo: Demo) -> None:
    spec = {
        "host": "bookstore-v1",
        "httpRoutes": [{"path": "/buy-a-book", "rateLimit": {"local": {"requests": 1, "unit": "hour"}}}],
    }
    commit(demo, "bookstore", obj(OSM_POLICY, "UpstreamTrafficSetting", "bookstore", spec))
    configured(demo, "bookstore-v1", '"name": "rate|/buy-a-book"')
    port = demo.proxies["bookbuyer"].outbound_port

    def buy(path: str) -> int:
        return call(port, "bookstore-v1.bookstore:14001", path)[0]

    assert [buy("/buy-a-book/new") for _ in range(3)] == [200, 429, 429]  # 1 an hour, then 429
    assert [buy("/books-bought") for _ in range(5)] == [200] * 5
    assert stat(demo, "bookstore-v1", "inbound_rate.http_local_rate_limit.rate_limited") == 2


def plaintext_from(source: str, port: int) -> tuple[int, str]:
    """A plain HTTP GET from ``source`` (a loopback address) straight to a sidecar's inbound port,
    as an ingress outside the mesh sends it; (0, "") when the connection is closed unanswered."""
    connection = http.client.HTTPConnection("127.0.0.1", port, timeout=5, source_address=(source, 0))
    try:
        connection.request("GET", "/")
        response = connection.getresponse()
        return response.status, response.read().decode()
    except (ConnectionError, http.client.HTTPException):
        return 0, ""
    finally:
        connection.close()


def test_a_plaintext_ingress_backend_answers_the_ingress_address_only(demo: Demo) -> None:
    warehouse = demo.proxies["bookwarehouse"]
    assert plaintext_from("127.0.0.2", warehouse.inbound_port) == (0, "")  # the mesh speaks mTLS only
    spec = {
        "backends": [{"name": "bookwarehouse", "port": {"number": warehouse.app_port, "protocol": "http"}}],
        "sources": [{"kind": "IPRange", "name": "127.0.0.2/32"}],  # the ingress's address
    }
    commit(demo, "bookwarehouse", obj(OSM_POLICY, "IngressBackend", "bookwarehouse", spec))
    eventually(
        lambda: plaintext_from("127.0.0.2", warehouse.inbound_port),
        lambda r: r == (200, "bookwarehouse"),
        "plaintext from the ingress address admitted",
    )
    assert plaintext_from("127.0.0.3", warehouse.inbound_port) == (0, "")  # another address
    # The bookstore's mTLS matches no chain of the listener; its sidecar answers 503.
    refused = [restock(demo, "bookstore-v1") for _ in range(3)]
    assert all(status in (403, 503) and body != "bookwarehouse" for status, body in refused), refused

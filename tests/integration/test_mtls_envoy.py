"""mTLS between real Envoy sidecars, as `gitmesh demo` runs them: traffic is TLS with SPIFFE
certificates from the mesh CA, strangers are refused, and certificates are renewed and the root
rotated under traffic without losing a request."""

from __future__ import annotations

import collections
import contextlib
import datetime
import json
import socket
import ssl
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from click.testing import CliRunner
from cryptography import x509

from gitmesh import demo as demo_mod
from gitmesh.certs import ca
from gitmesh.cli import cli
from gitmesh.cluster.port import Changes
from gitmesh.demo import CALLER_AGENT, Demo, eventually
from gitmesh.mesh.state import Identity
from gitmesh.settings import embedded
from tests import bookstore

pytestmark = pytest.mark.integration

BUYER = Identity("bookbuyer", "bookbuyer")


@contextlib.contextmanager
def running(tmp_path: Path, **kw: Any) -> Iterator[Demo]:
    try:
        with bookstore.running(tmp_path, **kw) as d:
            yield d
    except (AssertionError, TimeoutError):
        for log in sorted(tmp_path.glob("*.log")):
            print(f"--- {log.name} ---\n{log.read_text()[-3000:]}")
        raise


@pytest.fixture
def demo(tmp_path: Path) -> Iterator[Demo]:
    with running(tmp_path) as d:
        yield d


def stats(demo: Demo, sidecar: str, word: str) -> dict[str, int]:
    """The sidecar's counters whose name contains ``word``."""
    out = {}
    for line in demo.sidecars[sidecar].admin("/stats").splitlines():
        name, _, value = line.partition(": ")
        if word in name and value.strip().isdigit():
            out[name] = int(value)
    return out


def certs(demo: Demo, sidecar: str) -> dict[str, Any]:
    """What Envoy's admin /certs says the sidecar holds: its chain and the CAs it trusts."""
    listing = json.loads(demo.sidecars[sidecar].admin("/certs"))["certificates"]
    chains = [c for entry in listing for c in entry.get("cert_chain", [])]
    roots = [c for entry in listing for c in entry.get("ca_cert", [])]
    return {
        "spiffe": sorted(
            {san["uri"] for c in chains for san in c.get("subject_alt_names", []) if "uri" in san}
        ),
        "serials": sorted({c["serial_number"] for c in chains}),
        "roots": sorted({c["serial_number"] for c in roots}),
    }


def serial_hex(pem: str) -> str:
    """A serial number as Envoy's /certs writes it: 20 bytes in hex."""
    return format(x509.load_pem_x509_certificate(pem.encode()).serial_number, "040x")


def bundle_of(secrets: dict[str, Any]) -> str:
    return str(secrets["trust-bundle"]["validation_context"]["trusted_ca"]["inline_string"])


def active_secrets(demo: Demo, sidecar: str) -> dict[str, Any]:
    """The secrets the sidecar took over SDS and uses now (Envoy's config dump), by name."""
    dump = json.loads(demo.sidecars[sidecar].admin("/config_dump?resource=dynamic_active_secrets"))
    return {c["name"]: c["secret"] for c in dump["configs"]}


def direct_call(port: int, issued: ca.Issued | None, tmp_path: Path) -> int:
    """GET /books-bought straight to a sidecar's inbound port, over TLS with ``issued`` as the
    client certificate, or plaintext when None; the HTTP status."""
    request = (
        f"GET /books-bought HTTP/1.1\r\nHost: bookstore\r\nUser-Agent: {CALLER_AGENT}\r\n"
        "Connection: close\r\n\r\n"
    ).encode()
    with contextlib.ExitStack() as stack:
        conn = stack.enter_context(socket.create_connection(("127.0.0.1", port), timeout=5))
        if issued is not None:
            context = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
            context.check_hostname = False
            context.verify_mode = ssl.CERT_NONE  # the client's certificate is what is under test
            (tmp_path / "client.pem").write_text(issued.cert_pem)
            (tmp_path / "client.key").write_text(issued.key_pem)
            context.load_cert_chain(tmp_path / "client.pem", tmp_path / "client.key")
            conn = stack.enter_context(context.wrap_socket(conn))
        conn.sendall(request)
        reply = b""
        while chunk := conn.recv(65536):
            reply += chunk
    if not reply:
        raise ConnectionResetError("closed without a reply")
    return int(reply.split(b" ", 2)[1])


def now() -> datetime.datetime:
    return datetime.datetime.now(datetime.UTC)


class Load:
    """bookbuyer buying from the bookstore without pause, in a thread; every status is kept."""

    def __init__(self, demo: Demo) -> None:
        self.demo = demo
        self.results: list[int] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run)

    def _run(self) -> None:
        while not self._stop.is_set():
            try:
                self.results.append(self.demo.buy()[0])
            except OSError:
                self.results.append(0)

    def __enter__(self) -> Load:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()


def test_traffic_between_sidecars_is_mtls_with_spiffe_identities(demo: Demo) -> None:
    assert demo.buy()[0] == 200
    ca_state = demo.ca_keeper().load()
    assert ca_state is not None
    # The caller's cluster to the bookstore and the bookstore's inbound listener both shook hands.
    caller = stats(demo, "bookbuyer", "ssl.handshake")
    assert sum(v for k, v in caller.items() if k.startswith("cluster.bookstore/bookstore-v")) > 0, caller
    served = sum(
        v for name in ("bookstore-v1", "bookstore-v2") for k, v in stats(demo, name, "ssl.handshake").items()
    )
    assert served > 0
    held = certs(demo, "bookbuyer")
    assert held["spiffe"] == ["spiffe://cluster.local/ns/bookbuyer/sa/bookbuyer"]
    assert held["roots"] == [serial_hex(ca_state.signing.root_pem)]


def test_a_plaintext_client_and_a_client_of_another_ca_are_refused(demo: Demo, tmp_path: Path) -> None:
    port = demo.proxies["bookstore-v1"].inbound_port
    ca_state = demo.ca_keeper().load()
    assert ca_state is not None
    # The control: a client holding a mesh certificate for bookbuyer is served, like its sidecar.
    mesh_cert = ca.issue(ca_state.signing, ca_state.trust_domain, BUYER, now())
    assert direct_call(port, mesh_cert, tmp_path) == 200
    with pytest.raises(OSError):
        direct_call(port, None, tmp_path)  # plaintext: the TLS listener drops it
    stranger_root = ca.new_root(ca_state.trust_domain, now())
    stranger = ca.issue(stranger_root, ca_state.trust_domain, BUYER, now())  # the same SPIFFE ID
    with pytest.raises(OSError):  # ssl.SSLError or a reset: the handshake fails
        direct_call(port, stranger, tmp_path)
    failures = stats(demo, "bookstore-v1", "ssl.fail_verify") | stats(
        demo, "bookstore-v1", "ssl.connection_error"
    )
    assert sum(failures.values()) >= 1, failures
    # A mesh certificate of an identity no TrafficTarget names (whose own sidecar is sent no route
    # to the bookstore anyway): the connection is refused by the callers check.
    thief = ca.issue(ca_state.signing, ca_state.trust_domain, Identity("bookthief", "bookthief"), now())
    with pytest.raises(OSError):
        direct_call(port, thief, tmp_path)
    denied = stats(demo, "bookstore-v1", "inbound_callers.rbac.denied")
    assert sum(denied.values()) >= 1, denied


def test_a_root_rotation_under_traffic_loses_no_request(demo: Demo, tmp_path: Path) -> None:
    before = demo.ca_keeper().load()
    assert before is not None
    old_root = before.signing
    with Load(demo) as load:
        eventually(lambda: len(load.results), lambda n: n > 20, "traffic flowing")
        result = CliRunner().invoke(cli, ["certs", "rotate", "--store", str(demo.store), "--wait", "120"])
        assert result.exit_code == 0, result.output
        assert "Rotation done" in result.output
        sent = len(load.results)
        eventually(lambda: len(load.results), lambda n: n > sent + 20, "traffic after the rotation")
    assert load.results.count(200) == len(load.results), collections.Counter(load.results)
    after = demo.ca_keeper().load()
    assert after is not None and len(after.authorities) == 1 and after.signing != old_root
    # Every sidecar trusts only the new root and holds a certificate it issued. (Envoy's /certs
    # would still list the old root while connections made before the rotation stay open.)
    new_root = x509.load_pem_x509_certificate(after.signing.root_pem.encode())
    for name in demo.sidecars:
        held = eventually(
            lambda name=name: active_secrets(demo, name),
            lambda h: bundle_of(h) == after.signing.root_pem,
            f"{name} trusting only the new root",
        )
        chain = held["workload-cert"]["tls_certificate"]["certificate_chain"]
        leaf = x509.load_pem_x509_certificate(chain["inline_string"].encode())
        leaf.verify_directly_issued_by(new_root)
    # The old root is retired in the data plane too: its certificates are refused.
    old_cert = ca.issue(old_root, after.trust_domain, BUYER, now())
    with pytest.raises(OSError):
        direct_call(demo.proxies["bookstore-v1"].inbound_port, old_cert, tmp_path)
    new_cert = ca.issue(after.signing, after.trust_domain, BUYER, now())
    assert direct_call(demo.proxies["bookstore-v1"].inbound_port, new_cert, tmp_path) == 200


def test_short_lived_certificates_are_renewed_under_traffic(tmp_path: Path) -> None:
    with running(tmp_path, cert_lifetime="30s") as demo, Load(demo) as load:
        first = certs(demo, "bookbuyer")["serials"]
        # Renewed every 20 s (two thirds of 30 s): a new serial arrives over SDS, traffic carries on.
        eventually(lambda: certs(demo, "bookbuyer")["serials"], lambda s: s != first, "a renewal", 120)
        renewed = certs(demo, "bookbuyer")["serials"]
        eventually(
            lambda: certs(demo, "bookbuyer")["serials"], lambda s: s != renewed, "a second renewal", 120
        )
        sent = len(load.results)
        eventually(lambda: len(load.results), lambda n: n > sent + 20, "traffic after the renewals")
        status = CliRunner().invoke(cli, ["status", "--store", str(demo.store)]).output
    assert load.results.count(200) == len(load.results), collections.Counter(load.results)
    assert "certificate bookbuyer/bookbuyer expires" in status, status


def test_a_server_of_another_namespace_is_not_trusted_with_a_services_traffic(
    demo: Demo, tmp_path: Path
) -> None:
    """An endpoint of bookstore-v1 that holds a valid mesh certificate, but for bookthief: the caller's
    sidecar refuses it during the handshake, so not one byte of the request reaches it."""
    ca_state = demo.ca_keeper().load()
    assert ca_state is not None
    thief = ca.issue(ca_state.signing, ca_state.trust_domain, Identity("bookthief", "bookthief"), now())
    (tmp_path / "imposter.pem").write_text(thief.cert_pem)
    (tmp_path / "imposter.key").write_text(thief.key_pem)
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.load_cert_chain(tmp_path / "imposter.pem", tmp_path / "imposter.key")
    received: list[bytes] = []
    with socket.create_server(("127.0.0.1", 0)) as listener:
        listener.settimeout(0.2)
        port = listener.getsockname()[1]

        def serve_imposter(stop: threading.Event) -> None:
            while not stop.is_set():
                try:
                    conn, _ = listener.accept()
                except TimeoutError:
                    continue
                with conn, contextlib.suppress(OSError):
                    conn.settimeout(5)
                    with context.wrap_socket(conn, server_side=True) as tls_conn:
                        received.append(tls_conn.recv(65536))

        stop = threading.Event()
        worker = threading.Thread(target=serve_imposter, args=(stop,))
        worker.start()
        try:
            store = embedded(demo.store)
            (endpoints,) = [
                live.obj for ref, live in store.objects.list().items() if ref.name == "bookstore-v1-local"
            ]
            endpoints["ports"][0]["port"] = port
            store.write("imposter", None, "", Changes(writes=(endpoints,)))
            store.close()
            host = "bookstore-v1.bookstore:14001"
            caller = demo.proxies["bookbuyer"].outbound_port
            eventually(lambda: demo_mod.call(caller, host, "/books-bought")[0], lambda s: s == 503, "refused")
        finally:
            stop.set()
            worker.join()
    failed = stats(demo, "bookbuyer", "ssl.fail_verify_san")
    assert failed.get("cluster.bookstore/bookstore-v1|14001.ssl.fail_verify_san", 0) > 0, failed
    assert not any(received), received

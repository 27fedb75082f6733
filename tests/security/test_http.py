"""Attacks on the controller's HTTP port, against a real ``gitmesh run`` on the loopback.

Each attack is bounded in time and traffic, prints what it did to the process (RSS before, peak and
after; threads; open files, from /proc; ``pytest -s`` shows them) and asserts the bounds."""

from __future__ import annotations

import contextlib
import datetime
import hashlib
import hmac
import http.client
import json
import os
import resource
import secrets
import socket
import subprocess
import sys
import threading
import time
import urllib.request
from collections import Counter
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import grpc
import pytest
from envoy.config.core.v3 import base_pb2
from envoy.service.discovery.v3 import ads_pb2_grpc, discovery_pb2
from google.protobuf import json_format

from gitmesh.controller.httpd import MAX_BODY, MAX_CONNECTIONS, MAX_HEAD, MAX_STREAMS, REQUEST_TIMEOUT
from gitmesh.demo import eventually, free_port
from gitmesh.mesh.state import Identity, ServiceRef
from gitmesh.settings import embedded
from gitmesh.sync import webhook
from gitmesh.xds import resources
from gitmesh.xds.bootstrap import bootstrap, client_tls
from gitmesh.xds.translate import Proxy
from tests import factory as f
from tests.conftest import GitRepo
from tests.controller import RunningController

pytestmark = pytest.mark.integration

SECRET = b"webhook-secret-0123456789abcdef!"
MIB = 1 << 20


@dataclass(frozen=True)
class Figures:
    rss: float  # MiB
    peak: float  # MiB: the most RSS since the watch began
    threads: int
    fds: int
    sockets: int  # of the fds: the process may open files meanwhile (a new pool thread, its store)


def figures(pid: int) -> Figures:
    status = dict(line.split(":", 1) for line in Path(f"/proc/{pid}/status").read_text().splitlines())
    fds = []
    for fd in os.listdir(f"/proc/{pid}/fd"):
        with contextlib.suppress(FileNotFoundError):  # closed while listed
            fds.append(os.readlink(f"/proc/{pid}/fd/{fd}"))
    return Figures(
        int(status["VmRSS"].split()[0]) / 1024,
        int(status["VmHWM"].split()[0]) / 1024,
        int(status["Threads"]),
        len(fds),
        sum(fd.startswith("socket:") for fd in fds),
    )


class Watch:
    """A process's resources over an attack: before, samples taken during it, after."""

    def __init__(self, c: RunningController, attack: str) -> None:
        assert c.process is not None
        self.pid = c.process.pid
        self.attack = attack
        Path(f"/proc/{self.pid}/clear_refs").write_text("5")  # the peak RSS counts from now on
        self.before = figures(self.pid)
        self.samples = [self.before]

    def sample(self) -> Figures:
        self.samples.append(figures(self.pid))
        return self.samples[-1]

    @contextlib.contextmanager
    def sampling(self) -> Iterator[None]:
        """Samples taken all along the block, for the most it used."""
        stop = threading.Event()

        def sample() -> None:
            while not stop.wait(0.05):
                self.sample()

        sampler = threading.Thread(target=sample)
        sampler.start()
        try:
            yield
        finally:
            stop.set()
            sampler.join()

    def done(self) -> Figures:
        after = self.sample()
        most = max(self.samples, key=lambda s: s.fds)
        print(
            f"\n{self.attack}: RSS {self.before.rss:.1f} MiB before, {after.peak:.1f} peak, "
            f"{after.rss:.1f} after; threads {self.before.threads} -> at most "
            f"{max(s.threads for s in self.samples)} -> {after.threads}; "
            f"open files {self.before.fds} -> at most {most.fds} -> {after.fds}"
        )
        return after


@pytest.fixture
def token(tmp_path: Path) -> bytes:
    value = secrets.token_hex(32).encode()
    (tmp_path / "token").write_bytes(value + b"\n")
    (tmp_path / "secret").write_bytes(SECRET + b"\n")
    return value


def run_args(mesh: GitRepo, tmp_path: Path, *extra: str | Path) -> list[str | Path]:
    """A source polled once an hour: only a webhook or a reconcile request makes it fetch sooner."""
    return [
        "--repo",
        mesh.path,
        "--path",
        "mesh",
        "--store",
        tmp_path / "store.db",
        "--interval",
        "1h",
        *extra,
    ]


def start(
    controllers: list[RunningController],
    mesh: GitRepo,
    tmp_path: Path,
    open_files: tuple[int, int] | None = None,
) -> RunningController:
    credentials = ("--webhook-secret-file", tmp_path / "secret", "--http-token-file", tmp_path / "token")
    c = RunningController(tmp_path, run_args(mesh, tmp_path, *credentials), open_files).start()
    controllers.append(c)
    c.wait_applied(mesh.git("rev-parse", "HEAD").strip())
    return c


def signed(secret: bytes, body: bytes) -> dict[str, str]:
    return {webhook.SIGNATURE_HEADER: "sha256=" + hmac.new(secret, body, hashlib.sha256).hexdigest()}


def exchange(port: int, data: bytes, timeout: float = 30) -> bytes:
    """Send ``data`` as it is and read the answer until the server closes the connection."""
    with socket.create_connection(("127.0.0.1", port), timeout=timeout) as s:
        s.sendall(data)
        return read_all(s)


def read_all(s: socket.socket) -> bytes:
    answer = b""
    with contextlib.suppress(ConnectionResetError):
        while chunk := s.recv(65536):
            answer += chunk
    return answer


def healthy(c: RunningController, timeout: float = 15) -> bool:
    with urllib.request.urlopen(f"http://127.0.0.1:{c.http_port}/healthz", timeout=timeout) as r:
        return bool(r.status == 200 and r.read() == b"ok\n")


def ads_answers(c: RunningController, store: Path) -> bool:
    """One ADS stream over mTLS, as bookbuyer's sidecar: its clusters are sent."""
    proxy = Proxy(
        Identity("bookbuyer", "bookbuyer"), ServiceRef("bookbuyer", "bookbuyer"), 8080, 15001, 15006
    )
    backend = embedded(store)
    try:
        state = backend.state.ca.load()  # the controller made the mesh CA at start
    finally:
        backend.close()
    assert state is not None
    tls = client_tls(state, proxy.identity, datetime.datetime.now(datetime.UTC))
    credentials = grpc.ssl_channel_credentials(
        tls.bundle_pem.encode(), tls.key_pem.encode(), tls.cert_pem.encode()
    )
    node = json_format.ParseDict(
        bootstrap(proxy, xds_host="127.0.0.1", xds_port=1, admin_port=0)["node"], base_pb2.Node()
    )
    request = discovery_pb2.DiscoveryRequest(node=node, type_url=resources.CLUSTER)
    with grpc.secure_channel(f"127.0.0.1:{c.xds_port}", credentials) as channel:
        stream = ads_pb2_grpc.AggregatedDiscoveryServiceStub(channel).StreamAggregatedResources(
            iter([request]), timeout=15
        )
        response = next(stream)
        stream.cancel()
    return response.type_url == resources.CLUSTER and len(response.resources) > 0


@pytest.mark.parametrize(
    ("option", "content", "says"),
    [
        ("--webhook-secret-file", b"", "the webhook secret in {} is empty"),
        ("--webhook-secret-file", b" \n\t \n", "the webhook secret in {} is empty"),
        ("--webhook-secret-file", b"guessable\n", "the webhook secret in {} is 9 bytes, fewer than 16"),
        ("--http-token-file", b"guessable\n", "the HTTP token in {} is 9 bytes, fewer than 16"),
    ],
)
def test_a_secret_anyone_could_sign_with_is_refused_at_start(
    mesh: GitRepo, tmp_path: Path, option: str, content: bytes, says: str
) -> None:
    (tmp_path / "weak").write_bytes(content)
    port = free_port()
    result = subprocess.run(
        [
            *(sys.executable, "-m", "gitmesh", "run", *run_args(mesh, tmp_path)),
            *("--http-address", f"127.0.0.1:{port}", "--xds-address", f"127.0.0.1:{free_port()}"),
            *(option, tmp_path / "weak"),
        ],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode == 1
    assert f"error: {says.format(tmp_path / 'weak')}" in result.stderr.replace("\n", " ")
    if content.strip():
        assert content.strip().decode() not in result.stderr + result.stdout
    with pytest.raises(ConnectionRefusedError), socket.create_connection(("127.0.0.1", port)):
        pass  # nothing was served


def test_a_short_webhook_secret_only_when_asked_for_and_an_empty_key_never_signs(
    mesh: GitRepo, tmp_path: Path, controllers: list[RunningController]
) -> None:
    (tmp_path / "short").write_bytes(b"guessable\n")
    args = run_args(
        mesh, tmp_path, "--webhook-secret-file", tmp_path / "short", "--allow-short-webhook-secret"
    )
    c = RunningController(tmp_path, args).start()
    controllers.append(c)
    c.wait_applied(mesh.git("rev-parse", "HEAD").strip())
    body = json.dumps({"source": "default"}).encode()
    assert c.post("/hook", body, signed(b"", body))[0] == 401
    assert c.post("/hook", body, signed(b"guessable", body)) == (202, {"triggered": ["default"]})


def test_what_changes_the_controller_needs_credentials(
    mesh: GitRepo, tmp_path: Path, token: bytes, controllers: list[RunningController]
) -> None:
    c = start(controllers, mesh, tmp_path)
    fetches = 'gitmesh_fetches_total{source="default"}'
    before = c.metric(fetches)
    for authorization in (None, "Bearer wrong-token-0123456789abcdef", f"Basic {token.decode()}", "Bearer"):
        headers = {"Authorization": authorization} if authorization else {}
        status, answer = c.post("/sources/default/reconcile", b"", headers)
        assert (status, answer) == (401, {"error": "missing or wrong bearer token"})
    # Refused requests triggered nothing: a signed webhook is the only reason for the next run.
    first = mesh.commit("one", {"mesh/extra.yaml": f.dump(f.service_account("bookstore", "one"))})
    body = json.dumps({"source": "default"}).encode()
    assert c.post("/hook", body, signed(SECRET, body)) == (202, {"triggered": ["default"]})
    record = c.wait_applied(first)
    assert record["history"][0]["trigger"] == "webhook"
    assert c.metric(fetches) == before + 1
    # And the other way round: unsigned, wrongly signed, or signed with an empty key, nothing happens.
    for headers in ({}, signed(b"not-the-secret-0123456789abcdef", body), signed(b"", body)):
        assert c.post("/hook", body, headers)[0] == 401
    assert c.metric('gitmesh_webhooks_total{result="rejected"}') == 3
    second = mesh.commit("two", {"mesh/extra.yaml": f.dump(f.service_account("bookstore", "two"))})
    auth = {"Authorization": f"Bearer {token.decode()}"}
    assert c.post("/sources/default/reconcile", b"", auth) == (202, {"triggered": ["default"]})
    record = c.wait_applied(second)
    assert record["history"][0]["trigger"] == "manual"
    assert c.metric(fetches) == before + 2
    # Read-only endpoints stay open.
    assert c.get("/status")[0] == c.get("/metrics")[0] == c.get("/readyz")[0] == 200


def test_a_controller_without_a_token_refuses_every_reconcile(
    mesh: GitRepo, tmp_path: Path, controllers: list[RunningController]
) -> None:
    c = RunningController(tmp_path, run_args(mesh, tmp_path)).start()
    controllers.append(c)
    status, answer = c.post(
        "/sources/default/reconcile", b"", {"Authorization": "Bearer anything-at-all-really"}
    )
    assert (status, answer) == (
        403,
        {"error": "reconcile over HTTP is off: gitmesh run has no --http-token-file"},
    )


def open_stream(port: int) -> tuple[socket.socket, bytes]:
    """A console event stream, read up to its first event (or to the end of a refusal)."""
    s = socket.create_connection(("127.0.0.1", port), timeout=30)
    s.sendall(b"GET /console/events HTTP/1.1\r\nHost: x\r\n\r\n")
    seen = b""
    while b"event: view" not in seen and (chunk := s.recv(65536)):
        seen += chunk
    return s, seen


def test_the_console_only_reads_and_holds_a_bounded_number_of_streams(
    mesh: GitRepo, tmp_path: Path, token: bytes, controllers: list[RunningController]
) -> None:
    c = start(controllers, mesh, tmp_path)
    with urllib.request.urlopen(f"http://127.0.0.1:{c.http_port}/console", timeout=15) as r:
        page = r.read().decode()
        assert r.headers["Content-Security-Policy"] == "default-src 'self'; frame-ancestors 'none'"
    assert '<article class="source" data-source="default">' in page
    assert "<script>" not in page  # the one script is a file of the package, as the policy wants
    assert exchange(c.http_port, b"POST /console HTTP/1.1\r\nContent-Length: 0\r\n\r\n").startswith(
        b"HTTP/1.1 404 "
    )
    watch = Watch(c, f"{MAX_STREAMS} console streams and one more")
    streams = [open_stream(c.http_port) for _ in range(MAX_STREAMS)]
    try:
        assert all(
            head.startswith(b"HTTP/1.1 200 OK\r\nContent-Type: text/event-stream") for _, head in streams
        )
        extra, refused = open_stream(c.http_port)
        extra.close()
        assert refused.startswith(b"HTTP/1.1 503 ")
        assert healthy(c)
        during = watch.sample()
    finally:
        for s, _ in streams:
            s.close()

    # Closed by their clients, the streams give their places back.
    def reopened() -> bool:
        s, head = open_stream(c.http_port)
        s.close()
        return b" 200 OK" in head

    eventually(reopened, bool, "a stream open again")
    # A stream sees its client gone at its next event (every 2 s), then closes its socket.
    eventually(
        lambda: watch.sample().sockets, lambda n: n <= watch.before.sockets + 4, "the streams' sockets closed"
    )
    watch.done()
    assert during.threads <= watch.before.threads + 1  # the console's one reading thread, no more


def test_bodies_are_refused_before_they_are_read(
    mesh: GitRepo, tmp_path: Path, token: bytes, controllers: list[RunningController]
) -> None:
    c = start(controllers, mesh, tmp_path)
    watch = Watch(c, "Content-Length: -1 and 300 MiB")
    sent = 0
    with socket.create_connection(("127.0.0.1", c.http_port), timeout=30) as s:

        def flood() -> None:
            nonlocal sent
            s.sendall(b"POST /hook HTTP/1.1\r\nHost: x\r\nContent-Length: -1\r\n\r\n")
            chunk = b"[" * MIB
            with contextlib.suppress(OSError):
                while sent < 300 * MIB:
                    s.sendall(chunk)
                    sent += len(chunk)

        sender = threading.Thread(target=flood)
        sender.start()
        answer = read_all(s)
        sender.join()
    after = watch.done()
    status_line = answer.partition(b"\r\n")[0].decode()
    print(f"  the server answered {status_line!r}; the client got {sent / MIB:.0f} MiB out")
    assert answer.startswith(b"HTTP/1.1 400 Bad Request\r\n")
    assert b"Content-Length '-1' is not a length" in answer
    assert sent < 64 * MIB  # the server stopped reading: only the sockets' buffers took the rest
    assert after.peak - watch.before.rss < 16
    # Each bad length is answered at once, without waiting for a body that never comes.
    hook = "POST /hook HTTP/1.1\r\nHost: x\r\n"
    for head, status in [
        (hook, 411),
        (hook + "Transfer-Encoding: chunked\r\n", 411),
        (hook + "Content-Length: abc\r\n", 400),
        (hook + "Content-Length: +5\r\n", 400),
        (hook + "Content-Length: 5\r\nContent-Length: 5\r\n", 400),
        (hook + f"Content-Length: {MAX_BODY + 1}\r\n", 413),
        (hook + f"X-Padding: {'a' * MAX_HEAD}\r\n", 431),
        ("POST /sources/default/reconcile HTTP/1.1\r\n", 411),
    ]:
        assert exchange(c.http_port, (head + "\r\n").encode()).startswith(b"HTTP/1.1 %d " % status), head
    # The signature is checked before the body is parsed, and parsing never takes the process down.
    assert c.post("/hook", b"not json at all")[0] == 401
    deep = b"[" * 200_000 + b"]" * 200_000
    assert c.post("/hook", deep, signed(SECRET, deep)) == (400, {"error": "the body nests too deeply"})
    assert c.post("/hook", b"[" * (MAX_BODY - 1), {})[0] == 401
    assert healthy(c)


def test_slow_clients_hold_no_thread_and_are_let_go(
    mesh: GitRepo, tmp_path: Path, token: bytes, controllers: list[RunningController]
) -> None:
    c = start(controllers, mesh, tmp_path)
    watch = Watch(c, "50 slow clients")
    with contextlib.ExitStack() as sockets:
        slow = []
        for i in range(50):
            s = sockets.enter_context(
                socket.create_connection(("127.0.0.1", c.http_port), timeout=3 * REQUEST_TIMEOUT)
            )
            # Half announce a body of 1,000 bytes and send one; half never finish their head.
            s.sendall(
                b"POST /hook HTTP/1.1\r\nContent-Length: 1000\r\n\r\n{"
                if i % 2
                else b"POST /hook HTTP/1.1\r\nConte"
            )
            slow.append(s)
        # Those that never finish their head are held for the whole REQUEST_TIMEOUT.
        eventually(
            lambda: watch.sample().sockets, lambda n: n >= watch.before.sockets + 25, "the connections held"
        )
        for _ in range(10):  # the port keeps answering while they hang on
            assert healthy(c, timeout=5)
            watch.sample()
        answers = [read_all(s) for s in slow]  # each is answered and closed once its time is up
    eventually(
        lambda: watch.sample().sockets, lambda n: n <= watch.before.sockets + 2, "their sockets closed"
    )
    after = watch.done()
    # Each was let go with an answer: its request came too late (408), or its body found no place
    # among the 16 a webhook may hold while it arrives (503).
    let_go = Counter(a.partition(b"\r\n")[0].decode() for a in answers)
    print(f"  {dict(let_go)}")
    assert set(let_go) <= {"HTTP/1.1 408 Request Timeout", "HTTP/1.1 503 Service Unavailable"}
    assert sum(let_go.values()) == 50
    body = json.dumps({"source": "default"}).encode()
    assert c.post("/hook", body, signed(SECRET, body)) == (202, {"triggered": ["default"]})
    assert max(s.threads for s in watch.samples) <= watch.before.threads + 2
    assert after.peak - watch.before.rss < 16


def test_a_thousand_idle_connections_under_a_low_open_files_limit(
    mesh: GitRepo, tmp_path: Path, token: bytes, controllers: list[RunningController]
) -> None:
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft < 2048 <= hard:
        resource.setrlimit(resource.RLIMIT_NOFILE, (2048, hard))  # this test's own 1,000 sockets
    c = start(controllers, mesh, tmp_path, open_files=(256, 1024))
    assert c.process is not None
    limits = Path(f"/proc/{c.process.pid}/limits").read_text()
    assert any(line.split()[3:5] == ["1024", "1024"] for line in limits.splitlines() if "open files" in line)
    store = tmp_path / "store.db"
    eventually(lambda: ads_answers(c, store), bool, "the mesh served over ADS")
    watch = Watch(c, "1,000 idle connections, open files limited to 1,024")
    idle: list[socket.socket] = []
    try:
        with watch.sampling():
            idle += [socket.create_connection(("127.0.0.1", c.http_port), timeout=10) for _ in range(1000)]
            # The HTTP port takes at most a quarter of the limit; the connections beyond it wait in
            # the listen queue, and the idle ones make room once the port is full.
            assert healthy(c)
            assert ads_answers(c, store)
            assert all(read_all(s).startswith(b"HTTP/1.1 408 ") for s in idle[:100])  # let go, answered
    finally:
        for s in idle:
            s.close()
    most = max(s.fds for s in watch.samples)
    assert most <= watch.before.fds + min(MAX_CONNECTIONS, 1024 // 4) + 4
    assert healthy(c)
    assert ads_answers(c, store)
    eventually(
        lambda: watch.sample().sockets, lambda n: n <= watch.before.sockets + 4, "the port's sockets closed"
    )
    after = watch.done()
    assert after.peak - watch.before.rss < 32


def test_a_thousand_idle_connections_to_the_xds_port_under_a_low_open_files_limit(
    mesh: GitRepo, tmp_path: Path, token: bytes, controllers: list[RunningController]
) -> None:
    """Sidecars' connections may not take the descriptors the process needs: past its share they
    are closed as they arrive; /healthz and ADS answer throughout, and after."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft < 2048 <= hard:
        resource.setrlimit(resource.RLIMIT_NOFILE, (2048, hard))  # this test's own 1,100 sockets
    c = start(controllers, mesh, tmp_path, open_files=(256, 1024))
    store = tmp_path / "store.db"
    eventually(lambda: ads_answers(c, store), bool, "the mesh served over ADS")
    watch = Watch(c, "1,100 idle connections to the xDS port, open files limited to 1,024")
    idle: list[socket.socket] = []
    try:
        with watch.sampling():
            for _ in range(1100):
                with contextlib.suppress(OSError):  # refused or reset: the cap at work
                    idle.append(socket.create_connection(("127.0.0.1", c.xds_port), timeout=10))
            time.sleep(2)  # the periodic work (certificates, the CA, reports) runs meanwhile
            assert c.process is not None and c.process.poll() is None
            assert healthy(c)
    finally:
        for s in idle:
            s.close()
    most = max(s.fds for s in watch.samples)
    assert most <= 1024 - 64  # the share left to sidecars, not every descriptor
    eventually(lambda: ads_answers(c, store), bool, "ADS after the flood")
    assert healthy(c)
    eventually(
        lambda: watch.sample().sockets, lambda n: n <= watch.before.sockets + 8, "the flood's sockets closed"
    )
    after = watch.done()
    assert after.peak - watch.before.rss < 64


def test_a_flood_of_mixed_requests_is_answered_never_reset(
    mesh: GitRepo, tmp_path: Path, token: bytes, controllers: list[RunningController]
) -> None:
    c = start(controllers, mesh, tmp_path)
    hook = json.dumps({"source": "nothing-here"}).encode()
    requests: list[tuple[str, str, bytes, dict[str, str], set[int]]] = [
        ("GET", "/healthz", b"", {}, {200}),
        ("GET", "/readyz", b"", {}, {200}),
        ("GET", "/metrics", b"", {}, {200}),
        ("GET", "/status", b"", {}, {200}),
        ("GET", "/nothing", b"", {}, {404}),
        ("POST", "/hook", hook, signed(SECRET, hook), {200}),
        ("POST", "/hook", hook, {}, {401}),
        ("POST", "/sources/default/reconcile", b"", {}, {401}),
    ]
    shed = {408, 503}  # a request may be turned away when the port is full, with an answer

    def one(i: int) -> tuple[int, str | int]:
        method, path, body, headers, _ = requests[i % len(requests)]
        connection = http.client.HTTPConnection("127.0.0.1", c.http_port, timeout=60)
        try:
            connection.request(method, path, body if method == "POST" else None, headers)
            return i % len(requests), connection.getresponse().status
        except (OSError, http.client.HTTPException) as e:
            return i % len(requests), type(e).__name__
        finally:
            connection.close()

    watch = Watch(c, "2,000 mixed requests, 300 at a time")
    with watch.sampling(), ThreadPoolExecutor(300) as pool:
        outcomes = Counter(pool.map(one, range(2000)))
    after = watch.done()
    print(
        "  "
        + ", ".join(
            f"{requests[k][1]} {outcome}: {n}" for (k, outcome), n in sorted(outcomes.items(), key=str)
        )
    )
    failures = {o: n for o, n in outcomes.items() if o[1] not in requests[o[0]][4] | shed}
    assert not failures  # no reset, no other error, no answer but the expected one or a shed
    assert sum(outcomes.values()) == 2000
    assert healthy(c)
    eventually(
        lambda: watch.sample().sockets, lambda n: n <= watch.before.sockets + 4, "the flood's sockets closed"
    )
    assert after.peak - watch.before.rss < 64

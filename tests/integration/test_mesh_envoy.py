"""The whole data path: a Git repo applied to the embedded store, `gitmesh run` serving it over ADS,
real Envoy sidecars from `gitmesh bootstrap`, and small apps that answer with their own name."""

from __future__ import annotations

import collections
import http.server
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml
from click.testing import CliRunner

from gitmesh.cli import cli
from gitmesh.mesh.state import ServiceRef
from gitmesh.smi import Identity
from gitmesh.xds.bootstrap import bootstrap
from gitmesh.xds.translate import Proxy
from tests.conftest import EXAMPLE_REPO, GitRepo
from tests.xds.envoy import ENVOY

pytestmark = pytest.mark.integration

USER_AGENT = "bookbuyer-http-client/1.0"  # matches the books-bought header rule in the example


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class App:
    """A tiny HTTP app on 127.0.0.1 that answers every GET with its name."""

    def __init__(self, name: str) -> None:
        class Handler(http.server.BaseHTTPRequestHandler):
            def do_GET(self) -> None:
                body = name.encode()
                self.send_response(200)
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def do_POST(self) -> None:
                self.do_GET()

            def log_message(self, format: str, *args: object) -> None:
                pass

        self.server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.port = int(self.server.server_address[1])
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.thread.start()

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


class Sidecar:
    def __init__(self, proxy: Proxy, xds_port: int, workdir: Path) -> None:
        self.proxy = proxy
        self.admin_port = free_port()
        name = f"{proxy.service.name}"
        config = workdir / f"{name}.json"
        config.write_text(
            json.dumps(bootstrap(proxy, xds_host="127.0.0.1", xds_port=xds_port, admin_port=self.admin_port))
        )
        self.log = workdir / f"{name}.log"
        with self.log.open("w") as log:
            self.process = subprocess.Popen(
                [ENVOY, "-c", str(config), "--use-dynamic-base-id", "--concurrency", "1", "-l", "warning"],
                stdout=log,
                stderr=subprocess.STDOUT,
            )

    def ready(self) -> bool:
        """Envoy says LIVE once its first listeners and clusters from ADS are in place."""
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{self.admin_port}/ready", timeout=2) as r:
                return r.read().decode().strip() == "LIVE"
        except urllib.error.HTTPError as e:
            e.close()
            return False

    def stats(self) -> str:
        with urllib.request.urlopen(f"http://127.0.0.1:{self.admin_port}/stats", timeout=2) as r:
            return r.read().decode()

    def close(self) -> None:
        self.process.send_signal(signal.SIGTERM)
        try:
            self.process.wait(10)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait()


def call(port: int, host: str, path: str, user_agent: str = USER_AGENT) -> tuple[int, str]:
    request = urllib.request.Request(
        f"http://127.0.0.1:{port}{path}", headers={"Host": host, "User-Agent": user_agent}
    )
    try:
        with urllib.request.urlopen(request, timeout=5) as r:
            return r.status, r.read().decode()
    except urllib.error.HTTPError as e:
        with e:
            return e.code, e.read().decode()


def eventually(probe: Callable[[], Any], want: Callable[[Any], bool], what: str, timeout: float = 20) -> Any:
    deadline = time.monotonic() + timeout
    last: Any = None
    while time.monotonic() < deadline:
        try:
            last = probe()
            if want(last):
                return last
        except OSError as e:
            last = e
        time.sleep(0.1)
    raise AssertionError(f"{what}: gave up, last result {last!r}")


def endpoint_slice(ns: str, service: str, port: int) -> dict[str, Any]:
    return {
        "apiVersion": "discovery.k8s.io/v1",
        "kind": "EndpointSlice",
        "metadata": {
            "name": f"{service}-local",
            "namespace": ns,
            "labels": {"kubernetes.io/service-name": service},
        },
        "addressType": "IPv4",
        "ports": [{"name": "http", "port": port}],
        "endpoints": [{"addresses": ["127.0.0.1"], "conditions": {"ready": True}}],
    }


def split_file(v1: int, v2: int) -> str:
    return (EXAMPLE_REPO / "bookstore/split.yaml").read_text().replace("75", str(v1)).replace("25", str(v2))


class Demo:
    """The bookstore running for real: sidecars for bookbuyer, bookthief, bookstore-v1/v2, bookwarehouse."""

    def __init__(self, repo: GitRepo, workdir: Path) -> None:
        self.repo, self.workdir = repo, workdir
        self.store = workdir / "store.db"
        self.xds_port = free_port()
        self.apps = {
            name: App(name)
            for name in ("bookstore-v1", "bookstore-v2", "bookwarehouse", "bookbuyer", "bookthief")
        }
        ns_of = {"bookstore-v1": "bookstore", "bookstore-v2": "bookstore"}
        self.proxies = {
            name: Proxy(
                Identity(ns_of.get(name, name), "bookstore" if name.startswith("bookstore") else name),
                ServiceRef(ns_of.get(name, name), name),
                app.port,
                free_port(),
                free_port(),
            )
            for name, app in self.apps.items()
        }
        slices = [
            endpoint_slice(p.service.namespace, p.service.name, p.inbound_port) for p in self.proxies.values()
        ]
        shutil.copytree(EXAMPLE_REPO, repo.path / "mesh")
        repo.commit("bookstore", {"mesh/endpoints.yaml": yaml.safe_dump_all(slices)})
        self.apply()
        self.start_gitmesh()
        self.sidecars = {name: Sidecar(p, self.xds_port, workdir) for name, p in self.proxies.items()}

    def start_gitmesh(self) -> None:
        with (self.workdir / "gitmesh.log").open("a") as log:
            self.gitmesh = subprocess.Popen(
                [
                    sys.executable,
                    "-m",
                    "gitmesh",
                    "run",
                    "--store",
                    str(self.store),
                    "--xds-address",
                    f"127.0.0.1:{self.xds_port}",
                ],
                stdout=log,
                stderr=subprocess.STDOUT,
                env={k: v for k, v in os.environ.items() if k != "KUBECONFIG"},
            )

    def apply(self) -> None:
        result = CliRunner().invoke(
            cli, ["apply", "--repo", str(self.repo.path), "--path", "mesh", "--store", str(self.store)]
        )
        assert result.exit_code == 0, result.output

    def buy(self, path: str = "/books-bought", caller: str = "bookbuyer", **kw: Any) -> tuple[int, str]:
        return call(self.proxies[caller].outbound_port, "bookstore.bookstore:14001", path, **kw)

    def close(self) -> None:
        for s in self.sidecars.values():
            s.close()
        self.gitmesh.send_signal(signal.SIGTERM)
        try:
            self.gitmesh.wait(10)
        except subprocess.TimeoutExpired:
            self.gitmesh.kill()
            self.gitmesh.wait()
        for app in self.apps.values():
            app.close()


@pytest.fixture
def demo(git_repo: GitRepo, tmp_path: Path) -> Iterator[Demo]:
    d = Demo(git_repo, tmp_path)
    try:
        for name, sidecar in d.sidecars.items():
            eventually(sidecar.ready, bool, f"the {name} sidecar becoming ready")
        eventually(lambda: d.buy(), lambda r: r[0] == 200, "bookbuyer reaching bookstore")
        yield d
    except AssertionError:
        for log in sorted(tmp_path.glob("*.log")):
            print(f"--- {log.name} ---\n{log.read_text()[-3000:]}")
        raise
    finally:
        d.close()


def shares(demo: Demo, n: int = 1000) -> dict[str, float]:
    counts = collections.Counter(demo.buy()[1] for _ in range(n))
    return {name: counts[name] / n for name in counts}


def test_split_shares_follow_the_repo_with_nothing_restarted(demo: Demo) -> None:
    seen = shares(demo)
    assert abs(seen.get("bookstore-v1", 0) - 0.75) <= 0.05, seen
    assert abs(seen.get("bookstore-v2", 0) - 0.25) <= 0.05, seen

    demo.repo.commit("80/20", {"mesh/bookstore/split.yaml": split_file(80, 20)})
    demo.apply()
    eventually(lambda: shares(demo, 200).get("bookstore-v2", 0), lambda s: 0.1 <= s <= 0.3, "80/20 in effect")
    seen = shares(demo)
    assert abs(seen.get("bookstore-v1", 0) - 0.80) <= 0.05, seen
    assert abs(seen.get("bookstore-v2", 0) - 0.20) <= 0.05, seen

    for v1, v2, want in ((1, 0, {"bookstore-v1"}), (0, 1, {"bookstore-v2"})):
        demo.repo.commit(f"{v1}/{v2}", {"mesh/bookstore/split.yaml": split_file(v1, v2)})
        demo.apply()
        eventually(
            lambda want=want: set(shares(demo, 50)), lambda s, want=want: s == want, f"{v1}/{v2} in effect"
        )
    assert all(p.process.poll() is None for p in demo.sidecars.values()), "a sidecar restarted or died"


def test_access_follows_the_traffic_targets(demo: Demo) -> None:
    assert demo.buy("/books-bought")[0] == 200
    assert demo.buy("/buy-a-book/new")[0] == 200
    # A route outside the HTTPRouteGroup, and a request missing the header rule: 403.
    assert demo.buy("/admin")[0] == 403
    assert demo.buy("/books-bought", user_agent="curl/8")[0] == 403
    # bookthief is named by no TrafficTarget: its connection is refused, its sidecar answers 503.
    status, _ = demo.buy(caller="bookthief")
    assert status == 503
    denied = [
        line
        for line in demo.sidecars["bookstore-v1"].stats().splitlines()
        if "inbound_callers.rbac.denied" in line
    ]
    assert denied and int(denied[0].split(":")[1]) > 0


def test_restarting_gitmesh_fails_no_request(demo: Demo) -> None:
    results: list[int] = []
    stop = threading.Event()

    def load() -> None:
        while not stop.is_set():
            try:
                results.append(demo.buy()[0])
            except OSError:
                results.append(0)

    worker = threading.Thread(target=load)
    worker.start()
    try:
        time.sleep(0.5)
        demo.gitmesh.send_signal(signal.SIGKILL)
        demo.gitmesh.wait()
        time.sleep(1.0)  # the sidecars run on their last config meanwhile
        demo.start_gitmesh()
        time.sleep(2.0)
    finally:
        stop.set()
        worker.join()
    assert len(results) > 50
    assert results.count(200) == len(results), collections.Counter(results)
    # And the restarted gitmesh still drives them: a change arrives.
    demo.repo.commit("all v2", {"mesh/bookstore/split.yaml": split_file(0, 1)})
    demo.apply()
    eventually(lambda: set(shares(demo, 50)), lambda s: s == {"bookstore-v2"}, "0/1 after the restart")

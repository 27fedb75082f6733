"""The whole data path, as `gitmesh demo` runs it: a Git repo applied to the embedded store,
`gitmesh run` serving it over ADS, real Envoy sidecars from `gitmesh bootstrap`, and small apps
that answer with their own name."""

from __future__ import annotations

import collections
import json
import signal
import subprocess
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from click.testing import CliRunner

from gitmesh import demo as demo_mod
from gitmesh.cli import cli
from gitmesh.cluster.port import Changes
from gitmesh.demo import Demo, eventually
from gitmesh.settings import embedded
from tests import bookstore

pytestmark = pytest.mark.integration


@pytest.fixture(params=["sotw", "delta"])
def demo(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Demo]:
    try:
        with bookstore.running(tmp_path, delta=request.param == "delta") as d:
            yield d
    except (AssertionError, TimeoutError):
        for log in sorted(tmp_path.glob("*.log")):
            print(f"--- {log.name} ---\n{log.read_text()[-3000:]}")
        raise


def commit_split(d: Demo, v1: int, v2: int) -> None:
    split = d.repo / demo_mod.MESH_PATH / "bookstore" / "split.yaml"
    text = split.read_text()
    head, _, _ = text.partition("  backends:")
    backends = f"  - service: bookstore-v1\n    weight: {v1}\n  - service: bookstore-v2\n    weight: {v2}\n"
    split.write_text(f"{head}  backends:\n{backends}")
    git = ["git", "-c", "user.name=t", "-c", "user.email=t@example.com", "-C", str(d.repo)]
    subprocess.run([*git, "commit", "-q", "-am", f"split {v1}/{v2}"], check=True)
    d.applied = d.apply()


def test_split_shares_follow_the_repo_with_nothing_restarted(demo: Demo) -> None:
    seen = demo.shares(1000)
    assert abs(seen.get("bookstore-v1", 0) - 0.75) <= 0.05, seen
    assert abs(seen.get("bookstore-v2", 0) - 0.25) <= 0.05, seen

    commit_split(demo, 80, 20)
    eventually(lambda: demo.shares(200).get("bookstore-v2", 0), lambda s: 0.1 <= s <= 0.3, "80/20 in effect")
    seen = demo.shares(1000)
    assert abs(seen.get("bookstore-v1", 0) - 0.80) <= 0.05, seen
    assert abs(seen.get("bookstore-v2", 0) - 0.20) <= 0.05, seen

    for v1, v2, want in ((1, 0, {"bookstore-v1"}), (0, 1, {"bookstore-v2"}), (75, 25, None)):
        commit_split(demo, v1, v2)
        if want:
            eventually(lambda: set(demo.shares(50)), lambda s, want=want: s == want, f"{v1}/{v2} in effect")
    eventually(lambda: demo.shares(200).get("bookstore-v1", 0), lambda s: 0.65 <= s <= 0.85, "75/25 again")
    seen = demo.shares(1000)
    assert abs(seen["bookstore-v1"] - 0.75) <= 0.05, seen
    assert all(s.process.poll() is None for s in demo.sidecars.values()), "a sidecar restarted or died"


def commit_file(d: Demo, path: str, edit: Callable[[str], str], message: str) -> None:
    file = d.repo / demo_mod.MESH_PATH / path
    file.write_text(edit(file.read_text()))
    git = ["git", "-c", "user.name=t", "-c", "user.email=t@example.com", "-C", str(d.repo)]
    subprocess.run([*git, "commit", "-q", "-am", message], check=True)
    d.applied = d.apply()


def test_a_tcp_split_follows_the_repo(demo: Demo) -> None:
    seen = demo.tcp_shares(1000)
    assert abs(seen.get("mysql-v1", 0) - 0.90) <= 0.05, seen
    assert abs(seen.get("mysql-v2", 0) - 0.10) <= 0.05, seen

    commit_file(
        demo,
        "bookwarehouse/mysql.yaml",
        lambda t: t.replace("weight: 90", "weight: 50").replace("weight: 10", "weight: 50"),
        "mysql 50/50",
    )
    eventually(
        lambda: demo.tcp_shares(200).get("mysql-v2", 0), lambda s: 0.35 <= s <= 0.65, "50/50 in effect"
    )
    seen = demo.tcp_shares(1000)
    assert abs(seen.get("mysql-v1", 0) - 0.50) <= 0.05, seen
    assert abs(seen.get("mysql-v2", 0) - 0.50) <= 0.05, seen


def test_tcp_access_follows_the_tcproute(demo: Demo) -> None:
    assert demo.query("bookwarehouse") in ("mysql-v1", "mysql-v2")
    # bookthief's sidecar connects, but mysql's refuses it on accept: not a byte comes back.
    assert demo.query("bookthief") == ""
    thief = "  - kind: ServiceAccount\n    name: bookthief\n    namespace: bookthief\n"
    commit_file(demo, "bookwarehouse/mysql.yaml", lambda t: t + thief, "let bookthief at mysql")
    eventually(lambda: demo.query("bookthief"), bool, "bookthief let in")
    # The TCPRoute now names another port: nobody reaches mysql on 3306.
    commit_file(
        demo, "bookwarehouse/mysql.yaml", lambda t: t.replace("ports: [3306]", "ports: [3307]"), "3307"
    )
    eventually(
        lambda: (demo.query("bookwarehouse"), demo.query("bookthief")), lambda r: r == ("", ""), "shut"
    )


def test_a_permissive_mesh_config_lets_everyone_through_until_it_goes(demo: Demo) -> None:
    assert demo.buy(caller="bookthief")[0] == 403  # refused: bookthief may call nothing
    assert demo.query("bookthief") == ""
    config = demo.repo / demo_mod.MESH_PATH / "mesh-config.yaml"
    config.write_text(
        "apiVersion: config.openservicemesh.io/v1alpha2\nkind: MeshConfig\n"
        "metadata: {name: mesh, namespace: bookstore}\n"
        "spec: {traffic: {enablePermissiveTrafficPolicyMode: true}}\n"
    )
    git = ["git", "-c", "user.name=t", "-c", "user.email=t@example.com", "-C", str(demo.repo)]
    subprocess.run([*git, "add", "-A"], check=True)
    subprocess.run([*git, "commit", "-qm", "permissive"], check=True)
    demo.applied = demo.apply()
    # Both bookstore versions must have taken it: ask until twenty in a row agree.
    thief = lambda: {demo.buy(caller="bookthief")[0] for _ in range(20)}  # noqa: E731
    eventually(thief, lambda s: s == {200}, "bookthief let in")
    assert demo.buy("/admin")[0] == 200  # no route checks either
    assert demo.query("bookthief") in ("mysql-v1", "mysql-v2")

    subprocess.run([*git, "rm", "-q", str(config)], check=True)
    subprocess.run([*git, "commit", "-qm", "strict again"], check=True)
    demo.applied = demo.apply()
    # Its own sidecar loses the route and refuses it (403; a route configuration applies at once,
    # also on a connection opened before), and the bookstore's refuses it too meanwhile (403, 503).
    eventually(thief, lambda s: s == {403}, "bookthief refused again")
    assert demo.buy("/admin")[0] == 403
    assert demo.query("bookthief") == ""


def test_access_follows_the_traffic_targets(demo: Demo) -> None:
    assert demo.buy("/books-bought")[0] == 200
    assert demo.buy("/buy-a-book/new")[0] == 200
    # A route outside the HTTPRouteGroup, and a request that breaks its header rule: 403.
    assert demo.buy("/admin")[0] == 403
    assert demo.buy("/books-bought", user_agent="curl/8")[0] == 403
    # bookthief is named by no TrafficTarget: its sidecar is not even sent a route to the bookstore,
    # and refuses the call itself.
    status, _ = demo.buy(caller="bookthief")
    assert status == 403


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
        assert demo.gitmesh is not None
        demo.gitmesh.send_signal(signal.SIGKILL)
        demo.gitmesh.wait()
        time.sleep(1.0)  # the sidecars serve on their last config meanwhile
        demo.start_gitmesh()
        time.sleep(2.0)
    finally:
        stop.set()
        worker.join()
    assert len(results) > 50
    assert results.count(200) == len(results), collections.Counter(results)
    # The restarted gitmesh still drives them: a change arrives.
    commit_split(demo, 0, 1)
    eventually(lambda: set(demo.shares(50)), lambda s: s == {"bookstore-v2"}, "0/1 after the restart")


def test_the_demo_command_shows_the_split_and_the_refusals(tmp_path: Path) -> None:
    result = CliRunner().invoke(cli, ["demo", "--workdir", str(tmp_path / "demo")])
    assert result.exit_code == 0, result.output
    lines = result.output.splitlines()
    (shares,) = [line for line in lines if "(200 requests)" in line]
    v1 = int(shares.split("bookstore-v1 ")[1].split("%")[0])
    assert 60 <= v1 <= 90, shares
    assert any("/admin" in line and " 403 " in line for line in lines), result.output
    assert any(line.startswith("bookthief") and " 403 " in line for line in lines), result.output
    (mtls,) = [line for line in lines if "over mTLS" in line]
    assert "as spiffe://cluster.local/ns/bookbuyer/sa/bookbuyer (certificate expires 20" in mtls, mtls


def test_a_config_envoy_rejects_is_reported_and_the_last_good_one_keeps_serving(demo: Demo) -> None:
    assert demo.buy("/books-bought")[0] == 200
    # Make one Envoy refuses: write straight into the store, past validation, a route group whose
    # path pattern does not compile.
    store = embedded(demo.store)
    (routes,) = [
        live.obj for ref, live in store.objects.list().items() if ref.name == "bookstore-service-routes"
    ]
    routes["spec"]["matches"][0]["pathRegex"] = "/books-bought("
    store.write("vandal", None, "", Changes(writes=(routes,)))
    store.close()

    def status() -> dict[str, Any]:
        result = CliRunner().invoke(cli, ["status", "--store", str(demo.store), "--output", "json"])
        return json.loads(result.output)["sidecars"] or {}

    report = eventually(status, lambda r: bool(r.get("nacks")), "the rejection reported")
    nack = report["nacks"][0]
    assert nack["type"] == "RouteConfiguration"  # the route rules live in the inbound routes
    assert "bookstore/bookstore" in nack["proxy"]
    assert "missing )" in nack["message"]  # RE2's own words, as Envoy passed them on
    assert len(report["proxies"]) == len(demo_mod.APPS)
    # The sidecars keep their last good configuration: traffic and access rules are as before.
    assert demo.buy("/books-bought")[0] == 200
    assert demo.buy("/admin")[0] == 403
    text = CliRunner().invoke(cli, ["status", "--store", str(demo.store)]).output
    assert "rejected    RouteConfiguration version" in text

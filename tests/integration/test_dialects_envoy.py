"""What gitmesh makes of the SMI and OSM dialects, judged by real Envoy sidecars: the bookstore of
`gitmesh demo`, a commit in one of the forms, and requests through the sidecars."""

from __future__ import annotations

import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest

from gitmesh import demo as demo_mod
from gitmesh.demo import Demo, eventually
from tests import bookstore

pytestmark = pytest.mark.integration

CORPUS = Path(__file__).resolve().parents[1] / "corpus" / "dialects"


@pytest.fixture
def demo(tmp_path: Path) -> Iterator[Demo]:
    try:
        with bookstore.running(tmp_path) as d:
            yield d
    except (AssertionError, TimeoutError):
        for log in sorted(tmp_path.glob("*.log")):
            print(f"--- {log.name} ---\n{log.read_text()[-3000:]}")
        raise


def commit(d: Demo, path: str, text: str, message: str) -> None:
    file = d.repo / demo_mod.MESH_PATH / path
    file.write_text(text)
    git = ["git", "-c", "user.name=t", "-c", "user.email=t@example.com", "-C", str(d.repo)]
    subprocess.run([*git, "add", "-A"], check=True)
    subprocess.run([*git, "commit", "-qm", message], check=True)
    d.applied = d.apply()


def test_path_regex_is_anchored_at_the_start_of_the_path_only(demo: Demo) -> None:
    # bookbuyer may GET /buy-a-book/new (pathRegex: /buy-a-book/new): that path, and any path it
    # begins, as the SMI text says; not a path that merely contains it, nor a shorter one.
    assert demo.buy("/buy-a-book/new")[0] == 200
    assert demo.buy("/buy-a-book/new/hardcover")[0] == 200
    assert demo.buy("/buy-a-book/newest?copies=2")[0] == 200
    assert demo.buy("/shop/buy-a-book/new")[0] == 403
    assert demo.buy("/buy-a-book")[0] == 403


def test_a_v1alpha2_target_without_rules_allows_every_request_from_its_sources(demo: Demo) -> None:
    assert demo.buy(caller="bookthief")[0] == 403  # refused: bookthief may call nothing yet
    assert demo.query("bookthief") == ""
    target = (
        "apiVersion: access.smi-spec.io/v1alpha2\nkind: TrafficTarget\n"
        "metadata: {name: bookthief-everything, namespace: bookstore}\n"
        "spec:\n"
        "  destination: {kind: ServiceAccount, name: bookstore, namespace: bookstore}\n"
        "  sources: [{kind: ServiceAccount, name: bookthief, namespace: bookthief}]\n"
    )
    commit(demo, "bookstore/bookthief-access.yaml", target, "bookthief may call the bookstore")
    # Both bookstore versions must have taken it: ask until twenty in a row agree.
    thief = lambda: {demo.buy("/admin", caller="bookthief")[0] for _ in range(20)}  # noqa: E731
    eventually(thief, lambda s: s == {200}, "bookthief let in on every route")
    assert demo.buy("/books-bought", caller="bookthief", user_agent="curl/8")[0] == 200
    # bookbuyer keeps exactly its own routes; mysql's destination is not bookstore's.
    assert demo.buy("/admin")[0] == 403
    assert demo.query("bookthief") == ""


def test_an_osm_v1alpha1_mesh_config_with_permissive_mode_is_permissive(demo: Demo) -> None:
    assert demo.buy(caller="bookthief")[0] == 403  # refused: bookthief may call nothing yet
    text = (CORPUS / "meshconfig-v1alpha1-osm.yaml").read_text()
    assert "apiVersion: config.openservicemesh.io/v1alpha1" in text
    assert "enablePermissiveTrafficPolicyMode: true" in text
    commit(demo, "mesh-config.yaml", text, "OSM's MeshConfig, permissive")
    thief = lambda: {demo.buy("/admin", caller="bookthief")[0] for _ in range(20)}  # noqa: E731
    eventually(thief, lambda s: s == {200}, "bookthief let in")
    assert demo.query("bookthief") in ("mysql-v1", "mysql-v2")


def test_a_split_written_with_dns_names_splits_the_service_they_name(demo: Demo) -> None:
    split = (demo.repo / demo_mod.MESH_PATH / "bookstore" / "split.yaml").read_text()
    dns = (
        split.replace("service: bookstore\n", "service: bookstore.bookstore.svc.cluster.local\n")
        .replace("service: bookstore-v1\n", "service: bookstore-v1.bookstore\n")
        .replace("service: bookstore-v2\n", "service: bookstore-v2.bookstore.svc\n")
        .replace("weight: 75", "weight: 0")
        .replace("weight: 25", "weight: 100")
    )
    assert dns.count(".bookstore") == 3
    commit(demo, "bookstore/split.yaml", dns, "the split in OSM's spelling, all to v2")
    eventually(lambda: set(demo.shares(50)), lambda s: s == {"bookstore-v2"}, "0/100 in effect")

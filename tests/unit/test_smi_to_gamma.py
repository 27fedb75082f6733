"""SMI splits converted to GAMMA routes: the sidecars route every sample request as before."""

from __future__ import annotations

import json
import re
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import jsonschema
import pytest
import yaml
from click.testing import CliRunner
from envoy.config.route.v3 import route_components_pb2

import gitmesh.cli
from gitmesh import pipeline
from gitmesh.apis import read
from gitmesh.cli import cli
from gitmesh.plan import smi_to_gamma
from gitmesh.sync.git import read_directory
from gitmesh.xds import resources
from gitmesh.xds.translate import translate
from tests.conftest import EXAMPLE_REPO
from tests.xds.test_translate import BOOKBUYER

# (path, method, user-agent): inside and outside the HTTPRouteGroup's matches.
REQUESTS = [
    (path, method, agent)
    for path in ("/books-bought", "/books-bought/2", "/buy-a-book/new", "/buy-a-book", "/", "/admin")
    for method in ("GET", "POST")
    for agent in ("bookbuyer-http-client/1.0", "curl/8")
]


def example(matched: bool) -> list[dict[str, Any]]:
    objects = [m.obj for m in pipeline.check(read_directory(str(EXAMPLE_REPO))).desired]
    for o in objects:
        if matched and o["kind"] == "TrafficSplit" and o["metadata"]["name"] == "bookstore-split":
            o["spec"]["matches"] = [{"kind": "HTTPRouteGroup", "name": "bookstore-service-routes"}]
    return objects


def taken(routes: Sequence[route_components_pb2.Route], path: str, method: str, agent: str) -> object:
    """Where Envoy sends the request: the first route whose match holds (None: 404)."""
    headers = {":method": method, "user-agent": agent}
    for r in routes:
        m = r.match
        if m.HasField("safe_regex") and not re.fullmatch(m.safe_regex.regex, path):
            continue
        if m.prefix and not path.startswith(m.prefix):
            continue
        if all(re.fullmatch(h.string_match.safe_regex.regex, headers.get(h.name, "")) for h in m.headers):
            if r.route.cluster:
                return {r.route.cluster: 1}
            return {c.name: c.weight.value for c in r.route.weighted_clusters.clusters}
    return None


def bookstore_routes(objects: list[dict[str, Any]]) -> Sequence[route_components_pb2.Route]:
    config = translate(read.mesh(objects), BOOKBUYER)[resources.ROUTE]["outbound"]
    (host,) = [h for h in config.virtual_hosts if h.name == "bookstore/bookstore|14001"]
    return host.routes


@pytest.mark.parametrize("matched", [False, True], ids=["split", "split-with-matches"])
def test_the_converted_routes_send_every_request_where_the_split_did(matched: bool) -> None:
    smi = example(matched)
    done = smi_to_gamma.convert(smi)
    gamma = [o for o in smi if o["kind"] != "TrafficSplit"] + list(done.routes)
    before, after = bookstore_routes(smi), bookstore_routes(gamma)
    assert [taken(after, *r) for r in REQUESTS] == [taken(before, *r) for r in REQUESTS]
    assert {json.dumps(taken(after, *r)) for r in REQUESTS} >= {
        '{"bookstore/bookstore-v1|14001": 75, "bookstore/bookstore-v2|14001": 25}'
    }
    assert done.notes == (
        "TrafficSplit bookwarehouse/mysql-split: port 3306 is not HTTP, and GAMMA routes only HTTP and gRPC: "
        "not converted",
    )


def test_the_command_writes_routes_that_validate(tmp_path: Path) -> None:
    out = tmp_path / "routes.yaml"
    result = CliRunner().invoke(cli, ["convert", "smi-to-gamma", str(EXAMPLE_REPO), "--out", str(out)])
    assert result.exit_code == 0, result.output
    assert "1 HTTPRoute(s) written" in result.stderr and "mysql-split" in result.stderr
    (route,) = yaml.safe_load_all(out.read_text())
    assert route["spec"]["parentRefs"] == [
        {"group": "", "kind": "Service", "name": "bookstore", "port": 14001}
    ]
    repo = tmp_path / "repo"
    repo.mkdir()
    for f in EXAMPLE_REPO.rglob("*.yaml"):
        target = repo / f.relative_to(EXAMPLE_REPO)
        target.parent.mkdir(parents=True, exist_ok=True)
        target.write_text(f.read_text())
    (repo / "bookstore" / "split.yaml").unlink()
    (repo / "bookstore" / "route.yaml").write_text(out.read_text())
    assert pipeline.check(read_directory(str(repo))).ok
    as_json = CliRunner().invoke(cli, ["convert", "smi-to-gamma", str(EXAMPLE_REPO), "-o", "json"])
    doc = json.loads(as_json.stdout)
    assert doc["routes"] == [route]
    schema = json.loads(
        (Path(gitmesh.cli.__file__).parent / "schemas" / "conversion.schema.json").read_text()
    )
    jsonschema.Draft202012Validator(schema).validate(doc)

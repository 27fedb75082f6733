"""GAMMA routes in Envoy's terms: the bookstore with an HTTPRoute in place of its TrafficSplit."""

from __future__ import annotations

import json
import subprocess
from pathlib import Path
from typing import Any

import pytest
import yaml
from envoy.config.core.v3 import base_pb2
from envoy.config.route.v3 import route_components_pb2

from gitmesh import pipeline
from gitmesh.apis import read
from gitmesh.mesh.state import MeshState
from gitmesh.sync.git import read_directory
from gitmesh.xds import resources
from gitmesh.xds.translate import Proxy, translate
from tests.conftest import EXAMPLE_REPO
from tests.factory import mesh_config
from tests.xds.envoy import ENVOY
from tests.xds.test_translate import BOOKBUYER, BOOKTHIEF, as_static_bootstrap

ROUTE = """
apiVersion: gateway.networking.k8s.io/v1
kind: HTTPRoute
metadata: {name: bookstore, namespace: bookstore}
spec:
  parentRefs: [{group: "", kind: Service, name: bookstore, port: 14001}]
  rules:
  - name: stable
    matches: [{path: {type: PathPrefix, value: /books-bought}}]
    backendRefs: [{name: bookstore-v1, port: 14001}]
    timeouts: {request: 2s}
  - name: canary
    matches:
    - path: {type: Exact, value: /books-bought}
      headers: [{name: x-canary, value: "yes"}]
      queryParams: [{name: n, value: "1"}]
    filters:
    - type: RequestHeaderModifier
      requestHeaderModifier: {set: [{name: x-via, value: canary}], remove: [x-debug]}
    - type: ResponseHeaderModifier
      responseHeaderModifier: {add: [{name: x-route, value: canary}]}
    backendRefs: [{name: bookstore-v1, port: 14001, weight: 1}, {name: bookstore-v2, port: 14001, weight: 3}]
  - name: drained
    matches: [{path: {type: Exact, value: /buy-a-book/new}, method: GET}]
    backendRefs: [{name: bookstore-v2, port: 14001, weight: 0}]
"""

# Callers in bookbuyer's namespace have a route of their own: everything to v2.
CONSUMER = """
apiVersion: gateway.networking.k8s.io/v1
kind: HTTPRoute
metadata: {name: bookstore-for-buyers, namespace: bookbuyer}
spec:
  parentRefs: [{group: "", kind: Service, name: bookstore, namespace: bookstore}]
  rules: [{backendRefs: [{name: bookbuyer, port: 14001}]}]
"""


# Callers in bookbuyer's namespace send /buy-a-book to v2 only, granted by the bookstore's namespace.
GRANTED = """
apiVersion: gateway.networking.k8s.io/v1
kind: HTTPRoute
metadata: {name: bookstore-canary, namespace: bookbuyer}
spec:
  parentRefs: [{group: "", kind: Service, name: bookstore, namespace: bookstore}]
  rules:
  - matches: [{path: {value: /buy-a-book}}]
    backendRefs: [{name: bookstore-v2, namespace: bookstore, port: 14001}]
---
apiVersion: gateway.networking.k8s.io/v1beta1
kind: ReferenceGrant
metadata: {name: bookbuyer-routes, namespace: bookstore}
spec:
  from: [{group: gateway.networking.k8s.io, kind: HTTPRoute, namespace: bookbuyer}]
  to: [{group: "", kind: Service}]
"""


def gamma_example(*routes: str, permissive: bool = False) -> MeshState:
    validated = pipeline.check(read_directory(str(EXAMPLE_REPO)))
    objects = [m.obj for m in validated.desired if m.obj["kind"] != "TrafficSplit"]
    objects += [o for r in routes for o in yaml.safe_load_all(r)]
    return read.mesh([*objects, *([mesh_config(True)] if permissive else [])])


def bookstore_host(mesh: MeshState, proxy: Proxy) -> route_components_pb2.VirtualHost:
    routes = translate(mesh, proxy)[resources.ROUTE]["outbound"]
    (host,) = [h for h in routes.virtual_hosts if h.name == "bookstore/bookstore|14001"]
    return host


def test_rules_become_routes_in_precedence_order_and_nothing_else_matches() -> None:
    mesh = gamma_example(ROUTE)
    assert mesh.warnings == ()
    # A method outranks header and query matches; no catch-all: the rest is 404.
    drained, canary, stable = bookstore_host(mesh, BOOKBUYER).routes
    assert canary.match.safe_regex.regex == "(?:/books-bought$).*"
    assert [(h.name, h.string_match.safe_regex.regex) for h in canary.match.headers] == [("x-canary", "yes")]
    assert [(q.name, q.string_match.safe_regex.regex) for q in canary.match.query_parameters] == [("n", "1")]
    weights = [(c.name, c.weight.value) for c in canary.route.weighted_clusters.clusters]
    assert weights == [("bookstore/bookstore-v1|14001", 1), ("bookstore/bookstore-v2|14001", 3)]
    assert [(h.header.key, h.header.value, h.append_action) for h in canary.request_headers_to_add] == [
        ("x-via", "canary", base_pb2.HeaderValueOption.OVERWRITE_IF_EXISTS_OR_ADD)
    ]
    assert list(canary.request_headers_to_remove) == ["x-debug"]
    assert [(h.header.key, h.append_action) for h in canary.response_headers_to_add] == [
        ("x-route", base_pb2.HeaderValueOption.APPEND_IF_EXISTS_OR_ADD)
    ]
    assert [h.name for h in drained.match.headers] == [":method"]
    assert drained.direct_response.status == 500  # its one backend weighs 0
    assert stable.match.safe_regex.regex == "(?:/books-bought(?:/|$)).*"
    assert stable.route.timeout.ToMilliseconds() == 2000


def test_a_consumer_route_serves_its_namespace_and_the_producer_route_the_others() -> None:
    mesh = gamma_example(ROUTE, CONSUMER, permissive=True)
    (mine,) = bookstore_host(mesh, BOOKBUYER).routes
    assert mine.match.safe_regex.regex == "(?:/).*"
    assert [c.name for c in mine.route.weighted_clusters.clusters] == ["bookbuyer/bookbuyer|14001"]
    assert len(bookstore_host(mesh, BOOKTHIEF).routes) == 3


@pytest.mark.integration
@pytest.mark.parametrize(
    "routes", [(ROUTE,), (ROUTE, CONSUMER), (ROUTE, GRANTED)], ids=["producer", "consumer", "granted"]
)
def test_real_envoy_accepts_the_routes(routes: tuple[str, ...], tmp_path: Path) -> None:
    config = tmp_path / "bootstrap.json"
    bootstrap: dict[str, Any] = as_static_bootstrap(translate(gamma_example(*routes), BOOKBUYER), BOOKBUYER)
    config.write_text(json.dumps(bootstrap))
    result = subprocess.run(
        [ENVOY, "--mode", "validate", "-c", str(config), "--use-dynamic-base-id", "-l", "error"],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode == 0, result.stdout[-2000:] + result.stderr[-2000:]


GRPC = """
apiVersion: gateway.networking.k8s.io/v1
kind: GRPCRoute
metadata: {name: bookstore-grpc, namespace: bookstore}
spec:
  parentRefs: [{group: "", kind: Service, name: bookstore}]
  rules:
  - matches: [{method: {service: bookstore.Books, method: Buy}}]
    filters: [{type: RequestHeaderModifier, requestHeaderModifier: {add: [{name: x-grpc, value: "1"}]}}]
    backendRefs: [{name: bookstore-v2, port: 14001}]
  - backendRefs: [{name: bookstore-v1, port: 14001}]
"""


def test_a_grpc_route_s_methods_are_paths_after_the_http_route_s_rules() -> None:
    mesh = gamma_example(ROUTE, GRPC)
    assert mesh.warnings == ()
    *http, buy, rest = bookstore_host(mesh, BOOKBUYER).routes
    assert len(http) == 3
    assert buy.match.safe_regex.regex == "(?:/bookstore\\.Books/Buy$).*"
    assert [h.header.key for h in buy.request_headers_to_add] == ["x-grpc"]
    assert rest.match.prefix == "/"
    assert [c.name for c in rest.route.weighted_clusters.clusters] == ["bookstore/bookstore-v1|14001"]


@pytest.mark.integration
def test_real_envoy_accepts_a_grpc_route(tmp_path: Path) -> None:
    config = tmp_path / "bootstrap.json"
    config.write_text(json.dumps(as_static_bootstrap(translate(gamma_example(GRPC), BOOKBUYER), BOOKBUYER)))
    result = subprocess.run(
        [ENVOY, "--mode", "validate", "-c", str(config), "--use-dynamic-base-id", "-l", "error"],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode == 0, result.stdout[-2000:] + result.stderr[-2000:]


def test_a_granted_route_sends_to_a_service_of_another_namespace() -> None:
    mesh = gamma_example(ROUTE, GRANTED)
    assert mesh.warnings == ()
    (canary,) = bookstore_host(mesh, BOOKBUYER).routes
    assert [c.name for c in canary.route.weighted_clusters.clusters] == ["bookstore/bookstore-v2|14001"]
    # Without the grant the backend is refused: its rule answers 500, as the spec says, and the mesh warns.
    ungranted = gamma_example(ROUTE, GRANTED.split("---")[0])
    assert [r.direct_response.status for r in bookstore_host(ungranted, BOOKBUYER).routes] == [500]
    assert "no ReferenceGrant" in ungranted.warnings[0]


def test_clusters_of_grpc_ports_speak_http2_and_http_ones_are_left_to_envoys_default() -> None:
    greeter = {
        "apiVersion": "v1",
        "kind": "Service",
        "metadata": {"name": "greeter", "namespace": "bookstore"},
        "spec": {
            "ports": [{"name": "grpc", "port": 50051}, {"name": "web", "port": 80, "appProtocol": "h2c"}]
        },
    }
    mesh = gamma_example(yaml.safe_dump(greeter), permissive=True)
    clusters = translate(mesh, BOOKBUYER)[resources.CLUSTER]
    options = "envoy.extensions.upstreams.http.v3.HttpProtocolOptions"
    http2 = {n for n, c in clusters.items() if options in c.typed_extension_protocol_options}
    assert http2 == {"bookstore/greeter|50051", "bookstore/greeter|80"}
    assert "bookstore/bookstore-v1|14001" in clusters

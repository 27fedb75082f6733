"""A property of ``convert smi-to-gamma``: for generated SMI meshes, the converted repository is valid and
the Envoy routes a caller is served for it send every generated request where the original's did.

Pure: the mesh is translated to Envoy's route messages (``xds.translate``) and a request is routed by
reading them as Envoy does (the first route whose match holds); no Envoy runs here. The real-Envoy
check stays in ``tests/integration/test_gamma_envoy.py``.
"""

from __future__ import annotations

import re
import tempfile
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from fractions import Fraction
from pathlib import Path
from typing import Any

from envoy.config.route.v3 import route_components_pb2
from envoy.type.matcher.v3 import string_pb2
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from gitmesh import pipeline
from gitmesh.apis import read
from gitmesh.mesh.state import Identity, ServiceRef
from gitmesh.plan import smi_to_gamma
from gitmesh.sync.git import read_directory
from gitmesh.xds import resources
from gitmesh.xds.translate import Proxy, translate
from tests import factory as f

NS = "shop"
CALLER = Proxy(Identity("client", "client"), ServiceRef("client", "client"), 8080, 15001, 15006)
PORTS = (80, 8080, 9090)
# Path regexes as HTTPRouteGroups write them (anchored at the start of the path by gitmesh's reading).
PATH_REGEXES = ("/a", "/a/b", "/b.*", "/c/[0-9]+", "/(a|c)/x", "/")
METHODS = ("GET", "POST", "PUT")
USERS = ("alice", "b.*")
# Requests: (path, method, x-user or None), inside and outside the generated matches.
REQUESTS = [
    (path, method, user)
    for path in ("/", "/a", "/a/b", "/a/bc", "/ab", "/b", "/bx/y", "/c/1", "/c/x", "/a/x", "/d")
    for method in ("GET", "POST", "PUT", "DELETE")
    for user in (None, "alice", "bob")
]


@dataclass(frozen=True)
class Root:
    """A root Service, its HTTP ports (and a TCP one or not), its backends' weights and its split's
    HTTPRouteGroup matches (none: the split takes every request)."""

    name: str
    ports: tuple[int, ...]
    tcp: bool
    weights: tuple[int, ...]
    version: str
    matches: tuple[dict[str, Any], ...]


@st.composite
def matches(draw: st.DrawFn) -> tuple[dict[str, Any], ...]:
    found = []
    for i in range(draw(st.integers(0, 3))):
        m: dict[str, Any] = {"name": f"m{i}"}
        if draw(st.booleans()):
            m["pathRegex"] = draw(st.sampled_from(PATH_REGEXES))
        methods = draw(st.lists(st.sampled_from(METHODS), unique=True, max_size=2))
        m["methods"] = methods or ["*"]
        if draw(st.booleans()):
            m["headers"] = {"x-user": draw(st.sampled_from(USERS))}
        found.append(m)
    return tuple(found)


@st.composite
def roots(draw: st.DrawFn, name: str) -> Root:
    weights = draw(st.lists(st.integers(0, 100), min_size=1, max_size=3).filter(lambda w: sum(w) > 0))
    version = draw(st.sampled_from(("v1alpha2", "v1alpha3", "v1alpha4")))
    found = draw(matches()) if version in ("v1alpha3", "v1alpha4") else ()
    ports = tuple(draw(st.lists(st.sampled_from(PORTS), min_size=1, max_size=2, unique=True)))
    return Root(name, ports, draw(st.booleans()), tuple(weights), version, found)


def service(name: str, root: Root) -> dict[str, Any]:
    svc = f.service(NS, name, *root.ports, *((3306,) if root.tcp else ()))
    for p in svc["spec"]["ports"]:
        p["name"] = f"tcp-{p['port']}" if p["port"] == 3306 else f"http-{p['port']}"
    return svc


def smi_mesh(found: Sequence[Root]) -> list[dict[str, Any]]:
    objects = [
        f.namespace(NS),
        f.namespace("client"),
        f.service_account("client", "client"),
        f.service("client", "client", 8080),
        f.mesh_config(permissive=True),
        f.namespace("gitmesh-system"),
    ]
    for root in found:
        backends = {f"{root.name}-v{i}": w for i, w in enumerate(root.weights)}
        objects += [service(root.name, root), *(service(b, root) for b in backends)]
        split = f.split(NS, f"{root.name}-split", root.name, backends, root.version)
        if root.matches:
            group = f"{root.name}-routes"
            objects.append(
                {
                    "apiVersion": "specs.smi-spec.io/v1alpha4",
                    "kind": "HTTPRouteGroup",
                    "metadata": {"name": group, "namespace": NS},
                    "spec": {"matches": list(root.matches)},
                }
            )
            split["spec"]["matches"] = [{"kind": "HTTPRouteGroup", "name": group}]
        objects.append(split)
    return objects


def valid(objects: Sequence[Mapping[str, Any]]) -> list[dict[str, Any]]:
    """The objects as validation leaves them, once it finds no error in them."""
    with tempfile.TemporaryDirectory() as directory:
        (Path(directory) / "mesh.yaml").write_text(f.dump(*objects))
        checked = pipeline.check(read_directory(directory))
    assert checked.ok, [f"{d.code} {d.path}: {d.message}" for d in checked.errors]
    return [m.obj for m in checked.desired]


Destination = Mapping[str, Fraction] | int | None  # shares per cluster, a status Envoy answers, or 404


def destination(route: route_components_pb2.Route) -> Destination:
    if route.HasField("direct_response"):
        return route.direct_response.status
    if route.route.cluster:
        return {route.route.cluster: Fraction(1)}
    weights = {c.name: c.weight.value for c in route.route.weighted_clusters.clusters if c.weight.value}
    total = sum(weights.values())
    return {name: Fraction(w, total) for name, w in weights.items()}  # a weight of 0 takes nothing


def holds(m: string_pb2.StringMatcher, value: str | None) -> bool:
    if value is None:
        return False
    if m.HasField("safe_regex"):
        return re.fullmatch(m.safe_regex.regex, value) is not None
    return value == m.exact  # the only other matcher translation writes


def taken(
    routes: Sequence[route_components_pb2.Route], path: str, method: str, user: str | None
) -> Destination:
    """Where Envoy sends the request: the first route whose match holds; None when none does (404)."""
    headers = {":method": method, "x-user": user}
    for r in routes:
        m = r.match
        which = m.WhichOneof("path_specifier")
        if which == "prefix" and not path.startswith(m.prefix):
            continue
        if which == "path" and path != m.path:
            continue
        if which == "safe_regex" and re.fullmatch(m.safe_regex.regex, path) is None:
            continue
        assert which in ("prefix", "path", "safe_regex"), which
        assert not m.query_parameters  # no generated mesh matches on them
        if all(holds(h.string_match, headers.get(h.name)) for h in m.headers):
            return destination(r)
    return None


def served(
    objects: Sequence[Mapping[str, Any]], root: Root, port: int
) -> Sequence[route_components_pb2.Route]:
    config = translate(read.mesh(objects), CALLER)[resources.ROUTE]["outbound"]
    (host,) = [h for h in config.virtual_hosts if h.name == f"{NS}/{root.name}|{port}"]
    return host.routes


@settings(max_examples=30, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    st.lists(st.sampled_from(("reviews", "ratings")), min_size=1, max_size=2, unique=True).flatmap(
        lambda names: st.tuples(*(roots(n) for n in names))
    )
)
def test_the_converted_repository_routes_every_request_where_the_smi_one_did(found: tuple[Root, ...]) -> None:
    smi = valid(smi_mesh(found))
    done = smi_to_gamma.convert(smi)
    gamma = valid([o for o in smi if o["kind"] != "TrafficSplit"] + list(done.routes))
    assert len(done.routes) == sum(len(r.ports) for r in found)
    assert sorted(n for n in done.notes if "3306 is not HTTP" in n) == sorted(
        f"TrafficSplit {NS}/{r.name}-split: port 3306 is not HTTP, and GAMMA routes only HTTP and gRPC: "
        "not converted"
        for r in found
        if r.tcp
    )
    for root in found:
        for port in root.ports:
            before, after = served(smi, root, port), served(gamma, root, port)
            for request in REQUESTS:
                assert taken(after, *request) == taken(before, *request), (root, port, request)

"""What the SMI and OSM dialects mean once read: the corpus forms of tests/corpus/dialects, through
validation and conversion, into the MeshState and the Envoy resources made from it."""

from __future__ import annotations

import shutil
from pathlib import Path
from typing import Any

import pytest
import re2
from envoy.extensions.filters.http.rbac.v3 import rbac_pb2 as http_rbac_pb2

from gitmesh import pipeline
from gitmesh.apis import read, smi
from gitmesh.mesh.state import ALL_TRAFFIC, Backend, Identity, MeshState, ServiceRef, whole_path_regex
from gitmesh.sync.git import read_directory
from gitmesh.xds import resources
from gitmesh.xds.translate import Proxy, translate
from tests import factory as f

CORPUS = Path(__file__).resolve().parents[1] / "corpus" / "dialects"
HTTP_SERVICE = f.service("bookstore", "bookstore", 14001) | {
    "spec": {"selector": {"app": "bookstore"}, "ports": [{"name": "http", "port": 14001}]}
}
BOOKSTORE = ServiceRef("bookstore", "bookstore")
BOOKSTORE_PROXY = Proxy(
    Identity("bookstore", "bookstore"), ServiceRef("bookstore", "bookstore"), 8080, 15001, 15006
)


def desired(tmp_path: Path, *names: str) -> list[dict[str, Any]]:
    """The objects gitmesh would apply for these corpus files, read as one revision."""
    root = tmp_path / "revision"
    root.mkdir()
    for name in names:
        shutil.copyfile(CORPUS / name, root / name)
    checked = pipeline.check(read_directory(str(root)))
    assert checked.ok, checked.errors
    return [m.obj for m in checked.desired]


@pytest.mark.parametrize(
    ("written", "meant"),
    [
        ("bookstore", ("shop", "bookstore")),
        ("bookstore.shop", ("shop", "bookstore")),
        ("bookstore.shop.svc", ("shop", "bookstore")),
        ("bookstore.shop.svc.cluster", ("shop", "bookstore")),
        ("bookstore.shop.svc.cluster.local", ("shop", "bookstore")),
        ("bookstore.other.svc.cluster.local", ("other", "bookstore")),
        ("bookstore.shop.cluster.local", ("shop", "bookstore.shop.cluster.local")),
    ],
)
def test_service_names_resolve_in_the_split_namespace(written: str, meant: tuple[str, str]) -> None:
    assert smi.service_ref(written, "shop") == meant


@pytest.mark.parametrize("spelling", [1, 2, 3, 4, 5])
def test_a_dns_name_root_splits_the_service_it_names(tmp_path: Path, spelling: int) -> None:
    mesh = read.mesh(desired(tmp_path, f"split-root-dns-{spelling}.yaml"))
    assert mesh.warnings == ()
    split = mesh.splits[(BOOKSTORE, 14001)]
    assert split.backends == (Backend(ServiceRef("bookstore", "bookstore-v1"), 100),)


def test_dns_name_backends_get_their_share() -> None:
    objects = [
        *(f.service("shop", name, 80) for name in ("web", "web-v1", "web-v2")),
        f.split("shop", "web", "web.shop.svc.cluster.local", {"web-v1.shop": 1, "web-v2.shop.svc": 3}),
    ]
    mesh = read.mesh(objects)
    assert mesh.splits[(ServiceRef("shop", "web"), 80)].backends == (
        Backend(ServiceRef("shop", "web-v1"), 1),
        Backend(ServiceRef("shop", "web-v2"), 3),
    )


def test_a_root_in_another_namespace_splits_nothing_and_says_so() -> None:
    objects = [
        f.service("shop", "web", 80),
        f.service("other", "web", 80),
        f.service("shop", "web-v1", 80),
        f.split("shop", "web", "web.other.svc.cluster.local", {"web-v1": 1}),
    ]
    mesh = read.mesh(objects)
    assert mesh.splits == {}
    assert mesh.warnings == (
        "TrafficSplit shop/web: 'web.other.svc.cluster.local' names a Service in namespace 'other'; "
        "a split and its services share the split's namespace, 'shop'",
    )


def bookstore_caller(mesh: MeshState) -> list[Any]:
    return [p for p in mesh.permissions if p.destination == Identity("bookstore", "bookstore")]


@pytest.mark.parametrize("name", ["target-v1alpha2-no-rules.yaml", "target-v1alpha1-no-specs.yaml"])
def test_a_target_without_rules_allows_all_traffic_from_its_sources(tmp_path: Path, name: str) -> None:
    objects = desired(tmp_path, name)
    (target,) = objects
    assert target["apiVersion"] == "access.smi-spec.io/v1alpha3"
    assert "rules" not in target["spec"]  # the served version holds it as written: no rules
    mesh = read.mesh(objects)
    (permission,) = bookstore_caller(mesh)
    assert permission.caller == Identity("bookbuyer", "bookbuyer")
    assert (permission.http, permission.ports) == ALL_TRAFFIC
    assert permission.routes() == (
        "no rules/* (* any path)",
        "no rules (tcp any port)",
        "no rules (udp any port)",
    )
    # Envoy: any request of the caller passes the route rules, and its TCP connections are accepted.
    routes = translate(mesh, BOOKSTORE_PROXY)[resources.ROUTE]["inbound"]
    rbac = routes.virtual_hosts[0].typed_per_filter_config["envoy.filters.http.rbac"]
    assert b"bookbuyer" in rbac.value
    (policy,) = _http_policies(rbac).values()
    assert [p.WhichOneof("rule") for p in policy.permissions] == ["any"]


def _http_policies(packed: Any) -> Any:
    per_route = http_rbac_pb2.RBACPerRoute()
    packed.Unpack(per_route)
    return per_route.rbac.rules.policies


def test_access_v1alpha4_is_served_as_v1alpha3(tmp_path: Path) -> None:
    objects = desired(tmp_path, "access-v1alpha4.yaml")
    (target,) = [o for o in objects if o["kind"] == "TrafficTarget"]
    assert target["apiVersion"] == "access.smi-spec.io/v1alpha3"
    assert target["spec"]["sources"] == [
        {"kind": "ServiceAccount", "name": "bookbuyer", "namespace": "bookbuyer"}
    ]
    (permission,) = bookstore_caller(read.mesh(objects))
    assert permission.routes() == ("routes/books (GET ^/books)",)


@pytest.mark.parametrize("name", ["meshconfig-v1alpha1-osm.yaml", "meshconfig-v1alpha2-osm.yaml"])
def test_an_osm_mesh_config_in_permissive_mode_is_permissive(tmp_path: Path, name: str) -> None:
    objects = desired(tmp_path, name)
    (config,) = objects
    assert config["apiVersion"] == "config.openservicemesh.io/v1alpha2"
    mesh = read.mesh([*objects, HTTP_SERVICE])
    assert mesh.permissive
    # Envoy: the inbound listener checks no caller (any mesh certificate); without the MeshConfig
    # it admits only the callers TrafficTargets name.
    assert "envoy.filters.network.rbac" not in inbound_filters(mesh)
    assert "envoy.filters.network.rbac" in inbound_filters(read.mesh([HTTP_SERVICE]))


def inbound_filters(mesh: MeshState) -> list[str]:
    inbound = translate(mesh, BOOKSTORE_PROXY)[resources.LISTENER]["inbound"]
    return [flt.name for chain in inbound.filter_chains for flt in chain.filters]


@pytest.mark.parametrize(
    ("pattern", "path", "matches"),
    [
        ("/api", "/api", True),
        ("/api", "/api/books", True),
        ("/api", "/apis", True),
        ("/api", "/v1/api", False),
        ("/api$", "/api", True),
        ("/api$", "/api/books", False),
        ("/a|/b", "/b/c", True),
        (".*", "/", True),
    ],
)
def test_path_regex_is_anchored_at_the_start_of_the_path(pattern: str, path: str, matches: bool) -> None:
    assert bool(re2.fullmatch(whole_path_regex(pattern), path)) is matches

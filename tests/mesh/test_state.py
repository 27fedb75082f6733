from __future__ import annotations

from typing import Any

import pytest

from gitmesh import pipeline
from gitmesh.apis import read
from gitmesh.mesh.state import Backend, Endpoint, Identity, MeshState, ServiceRef
from gitmesh.sync.git import read_directory
from tests import factory as f
from tests.conftest import EXAMPLE_REPO


def example() -> MeshState:
    validated = pipeline.check(read_directory(str(EXAMPLE_REPO)))
    assert validated.ok
    return read.mesh(m.obj for m in validated.desired)


def test_the_bookstore() -> None:
    mesh = example()
    assert mesh.warnings == ()
    assert len(mesh.services) == 9
    assert Identity("bookthief", "bookthief") in mesh.identities
    split = mesh.splits[(ServiceRef("bookstore", "bookstore"), 14001)]
    assert split.backends == (
        Backend(ServiceRef("bookstore", "bookstore-v1"), 75),
        Backend(ServiceRef("bookstore", "bookstore-v2"), 25),
    )
    callers = {(str(p.caller), str(p.destination), p.routes()) for p in mesh.permissions}
    assert callers == {
        (
            "bookbuyer/bookbuyer",
            "bookstore/bookstore",
            (
                "bookstore-service-routes/books-bought (GET ^/books-bought user-agent~.*-http-client/.*)",
                "bookstore-service-routes/buy-a-book (GET ^/buy-a-book/new)",
            ),
        ),
        (
            "bookstore/bookstore",
            "bookwarehouse/bookwarehouse",
            ("bookwarehouse-service-routes/restock-books (POST ^/restock-books)",),
        ),
        ("bookwarehouse/bookwarehouse", "bookwarehouse/mysql", ("mysql (tcp ports 3306)",)),
    }
    assert mesh.allowed_callers(Identity("bookthief", "bookthief")) == ()
    (books,) = [m for p in mesh.permissions for m in p.http if m.name == "books-bought"]
    assert str(books) == (
        "bookstore-service-routes/books-bought (GET ^/books-bought user-agent~.*-http-client/.*)"
    )
    assert (books.path_regex, books.methods, books.headers) == (
        "/books-bought",
        ("GET",),
        (("user-agent", ".*-http-client/.*"),),
    )


def endpoint_slice(
    ns: str, service: str, port_name: str, port: int, *addresses: str, ready: bool = True
) -> dict[str, Any]:
    return {
        "apiVersion": "discovery.k8s.io/v1",
        "kind": "EndpointSlice",
        "metadata": {
            "name": f"{service}-x",
            "namespace": ns,
            "labels": {"kubernetes.io/service-name": service},
        },
        "addressType": "IPv4",
        "ports": [{"name": port_name, "port": port}],
        "endpoints": [{"addresses": list(addresses), "conditions": {"ready": ready}}],
    }


def test_endpoints_come_from_ready_endpoint_slices_by_port_name() -> None:
    mesh = read.mesh(
        [
            f.service("app", "web", 80),
            endpoint_slice("app", "web", "p80", 8080, "127.0.0.1", "127.0.0.2"),
            endpoint_slice("app", "web", "p80", 8080, "127.0.0.9", ready=False),
            endpoint_slice("app", "web", "other", 9090, "127.0.0.3"),
        ]
    )
    assert mesh.services[ServiceRef("app", "web")].endpoints == {
        80: (Endpoint("127.0.0.1", 8080), Endpoint("127.0.0.2", 8080))
    }


def test_a_backend_without_the_root_port_gets_no_traffic_and_a_warning() -> None:
    mesh = read.mesh(
        [
            f.service("app", "web", 80, 9090),
            f.service("app", "web-v1", 80, 9090),
            f.service("app", "web-v2", 9090),
            f.service("app", "web-v3", 8080),
            f.split("app", "s", "web", {"web-v1": 1, "web-v2": 1, "web-v3": 1}),
        ]
    )
    assert mesh.splits[(ServiceRef("app", "web"), 80)].backends == (Backend(ServiceRef("app", "web-v1"), 1),)
    assert mesh.splits[(ServiceRef("app", "web"), 9090)].backends == (
        Backend(ServiceRef("app", "web-v1"), 1),
        Backend(ServiceRef("app", "web-v2"), 1),
    )
    assert mesh.warnings == (
        "TrafficSplit app/s: backend web-v2 has no port 80 and gets no traffic on it",
        "TrafficSplit app/s: Service 'web-v3' has none of the ports of 'web' (80/TCP, 9090/TCP); "
        "it has 8080/TCP",
    )


def test_older_versions_mean_the_same() -> None:
    old = read.mesh(
        [
            f.service("app", "web", 80),
            f.service("app", "v1", 80),
            f.split("app", "s", "web", {"v1": 3}, version="v1alpha2"),
            {
                "apiVersion": "access.smi-spec.io/v1alpha1",
                "kind": "TrafficTarget",
                "metadata": {"name": "t", "namespace": "app"},
                "destination": {"kind": "ServiceAccount", "name": "web", "namespace": "app"},
                "specs": [{"kind": "TCPRoute", "name": "all"}],
                "sources": [{"kind": "ServiceAccount", "name": "client"}],
            },
            {
                "apiVersion": "specs.smi-spec.io/v1alpha1",
                "kind": "TCPRoute",
                "metadata": {"name": "all", "namespace": "app"},
            },
        ]
    )
    (p,) = old.permissions
    assert (p.caller, p.destination) == (Identity("app", "client"), Identity("app", "web"))
    assert p.routes() == ("all (tcp any port)",)
    assert old.splits[(ServiceRef("app", "web"), 80)].backends == (Backend(ServiceRef("app", "v1"), 3),)


def test_tcp_ports() -> None:
    mesh = read.mesh(
        [f.tcp_route("db", "pg", 5432), f.target("db", "t", "postgres", ["app/api"], "pg", kind="TCPRoute")]
    )
    (p,) = mesh.permissions
    assert (p.routes(), p.http) == (("pg (tcp ports 5432)",), ())


@pytest.mark.parametrize(("configs", "permissive"), [((), False), ((False,), False), ((True,), True)])
def test_a_mesh_config_makes_the_mesh_permissive(configs: tuple[bool, ...], permissive: bool) -> None:
    assert read.mesh([f.mesh_config(c) for c in configs]).permissive is permissive

"""The resource names EnvoyPatches target, pinned: README "Resource names" documents them, and a
patch written against them must keep working after an upgrade. A change here is a breaking change
for users' patches: say so in the release notes, and keep the README true."""

from __future__ import annotations

from gitmesh import pipeline
from gitmesh.apis import read
from gitmesh.mesh.state import Identity, ServiceRef
from gitmesh.sync.git import read_directory
from gitmesh.xds import resources
from gitmesh.xds.translate import Proxy, Translator, Upstream
from tests.conftest import EXAMPLE_REPO

BOOKBUYER = Proxy(
    Identity("bookbuyer", "bookbuyer"),
    ServiceRef("bookbuyer", "bookbuyer"),
    8080,
    15001,
    15006,
    (Upstream(ServiceRef("bookwarehouse", "mysql"), 3306, 13306),),
)


def test_the_documented_names_of_a_sidecars_resources() -> None:
    validated = pipeline.check(read_directory(str(EXAMPLE_REPO)))
    mesh = read.mesh(m.obj for m in validated.desired)
    found = Translator(mesh).resources(BOOKBUYER)
    assert sorted(found[resources.LISTENER]) == ["inbound", "outbound", "outbound|bookwarehouse/mysql|3306"]
    assert sorted(found[resources.ROUTE]) == ["inbound", "outbound"]
    # A cluster per service port bookbuyer may call: <namespace>/<service>|<port>.
    assert sorted(found[resources.CLUSTER]) == [
        "bookstore/bookstore-v1|14001",
        "bookstore/bookstore-v2|14001",
        "bookstore/bookstore|14001",
    ]
    assert sorted(found[resources.ENDPOINT]) == sorted(found[resources.CLUSTER])

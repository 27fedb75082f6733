"""The resource names EnvoyPatches target, pinned: README "Resource names" documents them, and a
patch written against them must keep working after an upgrade. A change here is a breaking change
for users' patches: say so in the release notes, and keep the README true."""

from __future__ import annotations

from dataclasses import replace

from gitmesh import pipeline
from gitmesh.apis import read
from gitmesh.mesh.state import Identity, ServiceRef
from gitmesh.sync.git import read_directory
from gitmesh.xds import resources
from gitmesh.xds.translate import Proxy, Translator, Upstream
from tests.conftest import EXAMPLE_REPO
from tests.xds.test_pod_policies import MTLS_INGRESS, with_egress, with_inbound_policies
from tests.xds.test_transparent import BUYER, V1_PROXY

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
    # The catch-all of what bookbuyer may not call, last of its outbound virtual hosts.
    assert [h.name for h in found[resources.ROUTE]["outbound"].virtual_hosts][-1] == "refused"


def test_the_documented_names_of_egress_and_a_pods_policies() -> None:
    found = Translator(with_egress(open_=True)).resources(BUYER)
    assert {"egress|api.example.com:80", "egress|*.example.org:8080", "egress|*", "passthrough"} <= set(
        found[resources.CLUSTER]
    )
    chains = {c.name for c in found[resources.LISTENER]["outbound"].filter_chains}
    assert {"egress|http:80", "egress|tcp:5432", "egress|api.example.com:443"} <= chains
    hosts = {h.name for h in found[resources.ROUTE]["outbound"].virtual_hosts}
    assert {"egress|api.example.com:80", "egress|*"} <= hosts
    closed = Translator(replace(with_egress(), egress_open=False)).resources(BUYER)
    assert closed[resources.LISTENER]["outbound"].default_filter_chain.name == "outbound|refused"
    pod = Translator(with_inbound_policies(MTLS_INGRESS)).resources(V1_PROXY)
    assert sorted(pod[resources.ROUTE]) == ["inbound", "inbound|8080", "outbound"]
    assert {c.name for c in pod[resources.LISTENER]["inbound"].filter_chains} == {"inbound|8080"}

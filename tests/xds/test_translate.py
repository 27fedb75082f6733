"""Translation from MeshState to Envoy resources: pure tests, and real Envoy judging the output."""

from __future__ import annotations

import ipaddress
import json
import subprocess
from pathlib import Path
from typing import Any

import pytest
from envoy.config.listener.v3 import listener_pb2
from envoy.extensions.filters.http.rbac.v3 import rbac_pb2 as http_rbac_pb2
from envoy.extensions.filters.network.http_connection_manager.v3 import http_connection_manager_pb2 as hcm_pb2
from envoy.extensions.filters.network.rbac.v3 import rbac_pb2 as network_rbac_pb2
from google.protobuf import json_format

from gitmesh import pipeline
from gitmesh.mesh.state import MeshState, ServiceRef, build
from gitmesh.smi import Identity
from gitmesh.sync.git import read_directory
from gitmesh.xds import resources
from gitmesh.xds.bootstrap import bootstrap
from gitmesh.xds.translate import Proxy, Resources, Translator, identity_address, translate
from tests.conftest import EXAMPLE_REPO
from tests.xds.envoy import ENVOY

BOOKSTORE = Proxy(
    Identity("bookstore", "bookstore"), ServiceRef("bookstore", "bookstore-v1"), 8080, 15001, 15006
)
BOOKTHIEF = Proxy(
    Identity("bookthief", "bookthief"), ServiceRef("bookthief", "bookthief"), 8080, 15001, 15006
)


def example(permissive: bool = False) -> MeshState:
    validated = pipeline.check(read_directory(str(EXAMPLE_REPO)))
    return build((m.obj for m in validated.desired), permissive=permissive)


def serialized(res: Resources) -> dict[str, dict[str, bytes]]:
    return {
        t: {n: r.SerializeToString(deterministic=True) for n, r in named.items()} for t, named in res.items()
    }


def network_filters(listener: listener_pb2.Listener) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for f in listener.filter_chains[0].filters:
        cls = {
            "envoy.filters.network.rbac": network_rbac_pb2.RBAC,
            "envoy.filters.network.http_connection_manager": hcm_pb2.HttpConnectionManager,
        }[f.name]
        msg = cls()
        f.typed_config.Unpack(msg)
        out[f.name] = msg
    return out


def test_the_same_input_gives_byte_identical_output() -> None:
    assert serialized(translate(example(), BOOKSTORE)) == serialized(translate(example(), BOOKSTORE))


def test_names_follow_the_one_scheme() -> None:
    res = translate(example(), BOOKSTORE)
    assert set(res[resources.LISTENER]) == {"outbound", "inbound"}
    assert set(res[resources.ROUTE]) == {"outbound", "inbound"}
    assert "bookstore/bookstore-v1|14001" in res[resources.CLUSTER]
    assert set(res[resources.ENDPOINT]) == set(res[resources.CLUSTER])  # the local app's is in the bootstrap


def test_proxies_share_one_cluster_map_and_one_route_map_per_namespace() -> None:
    translator = Translator(example())
    store, thief = translator.resources(BOOKSTORE), translator.resources(BOOKTHIEF)
    assert store[resources.CLUSTER] is thief[resources.CLUSTER]
    assert store[resources.ENDPOINT] is thief[resources.ENDPOINT]
    again = translator.resources(BOOKSTORE)
    assert again[resources.ROUTE]["outbound"] is store[resources.ROUTE]["outbound"]
    assert thief[resources.ROUTE]["outbound"] is not store[resources.ROUTE]["outbound"]


def test_the_split_becomes_weighted_clusters_found_by_host() -> None:
    routes = translate(example(), BOOKSTORE)[resources.ROUTE]["outbound"]
    (host,) = [h for h in routes.virtual_hosts if h.name == "bookstore/bookstore|14001"]
    assert "bookstore" in host.domains  # same namespace as the proxy: the short name works
    assert {"bookstore.bookstore", "bookstore.bookstore.svc.cluster.local:14001"} <= set(host.domains)
    weights = [(c.name, c.weight.value) for c in host.routes[0].route.weighted_clusters.clusters]
    assert weights == [("bookstore/bookstore-v1|14001", 75), ("bookstore/bookstore-v2|14001", 25)]
    (warehouse,) = [h for h in routes.virtual_hosts if h.name == "bookwarehouse/bookwarehouse|14001"]
    assert "bookwarehouse" not in warehouse.domains  # another namespace: only qualified names
    assert warehouse.routes[0].route.cluster == "bookwarehouse/bookwarehouse|14001"


def test_inbound_admits_only_allowed_callers_on_their_routes() -> None:
    inbound = translate(example(), BOOKSTORE)[resources.LISTENER]["inbound"]
    filters = network_filters(inbound)
    callers = filters["envoy.filters.network.rbac"].rules.policies["callers"].principals
    assert [p.direct_remote_ip.address_prefix for p in callers] == [
        identity_address(Identity("bookbuyer", "bookbuyer"))
    ]
    hcm = filters["envoy.filters.network.http_connection_manager"]
    rbac = http_rbac_pb2.RBAC()
    hcm.http_filters[0].typed_config.Unpack(rbac)
    policy = rbac.rules.policies["bookbuyer/bookbuyer"]
    assert len(policy.permissions) == 2  # books-bought, buy-a-book
    rules = policy.permissions[0].and_rules.rules
    assert rules[0].url_path.path.safe_regex.regex == "/books-bought"


def test_a_proxy_nobody_may_call_refuses_everyone() -> None:
    filters = network_filters(translate(example(), BOOKTHIEF)[resources.LISTENER]["inbound"])
    (principal,) = filters["envoy.filters.network.rbac"].rules.policies["callers"].principals
    assert principal.not_id.any


def test_permissive_mode_has_no_rbac() -> None:
    filters = network_filters(translate(example(permissive=True), BOOKTHIEF)[resources.LISTENER]["inbound"])
    assert list(filters) == ["envoy.filters.network.http_connection_manager"]


def test_identity_addresses_are_stable_loopback_addresses() -> None:
    a = identity_address(Identity("bookstore", "bookstore"))
    assert a == identity_address(Identity("bookstore", "bookstore"))
    assert ipaddress.ip_address(a) in ipaddress.ip_network("127.0.0.0/8")
    assert a != identity_address(Identity("bookbuyer", "bookbuyer"))
    assert a != "127.0.0.1"


def _as_static_bootstrap(res: Resources, proxy: Proxy) -> dict[str, Any]:
    """The proxy's resources as a static bootstrap, so Envoy's validate mode can judge them."""

    def js(m: Any) -> dict[str, Any]:
        return json.loads(json_format.MessageToJson(m))

    own = bootstrap(proxy, xds_host="127.0.0.1", xds_port=1, admin_port=0)["static_resources"]["clusters"]
    clusters = [c for c in own if c["name"] != "gitmesh-xds"]
    for name, c in res[resources.CLUSTER].items():
        d = js(c)
        if "edsClusterConfig" in d:
            del d["edsClusterConfig"]
            d["type"] = "STATIC"
            d["loadAssignment"] = js(res[resources.ENDPOINT][name])
        clusters.append(d)
    listeners = []
    for listener in res[resources.LISTENER].values():
        d = js(listener)
        for f in d["filterChains"][0]["filters"]:
            if f["name"] == "envoy.filters.network.http_connection_manager":
                route = f["typedConfig"].pop("rds")["routeConfigName"]
                f["typedConfig"]["routeConfig"] = js(res[resources.ROUTE][route])
        listeners.append(d)
    return {
        "node": {"id": "validate", "cluster": "validate"},
        "dynamic_resources": {
            "ads_config": {
                "api_type": "GRPC",
                "transport_api_version": "V3",
                "grpc_services": [{"envoy_grpc": {"cluster_name": "xds"}}],
            }
        },
        "static_resources": {
            "clusters": [
                *clusters,
                {
                    "name": "xds",
                    "type": "STATIC",
                    "load_assignment": {
                        "cluster_name": "xds",
                        "endpoints": [
                            {
                                "lb_endpoints": [
                                    {
                                        "endpoint": {
                                            "address": {
                                                "socket_address": {"address": "127.0.0.1", "port_value": 1}
                                            }
                                        }
                                    }
                                ]
                            }
                        ],
                    },
                },
            ],
            "listeners": listeners,
        },
    }


@pytest.mark.integration
@pytest.mark.parametrize("proxy", [BOOKSTORE, BOOKTHIEF], ids=["bookstore", "bookthief"])
@pytest.mark.parametrize("permissive", [False, True], ids=["rbac", "permissive"])
def test_real_envoy_accepts_the_translation(proxy: Proxy, permissive: bool, tmp_path: Path) -> None:
    config = tmp_path / "bootstrap.json"
    config.write_text(json.dumps(_as_static_bootstrap(translate(example(permissive), proxy), proxy)))
    result = subprocess.run(
        [ENVOY, "--mode", "validate", "-c", str(config), "--use-dynamic-base-id", "-l", "error"],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode == 0, result.stdout[-2000:] + result.stderr[-2000:]
    assert "OK" in result.stdout

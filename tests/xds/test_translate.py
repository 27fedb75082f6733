"""Translation from MeshState to Envoy resources: pure tests, and real Envoy judging the output."""

from __future__ import annotations

import datetime
import json
import re
import subprocess
from dataclasses import replace
from pathlib import Path
from typing import Any

import pytest
from envoy.config.listener.v3 import listener_pb2
from envoy.config.route.v3 import route_pb2
from envoy.extensions.filters.http.rbac.v3 import rbac_pb2 as http_rbac_pb2
from envoy.extensions.filters.network.direct_response.v3 import config_pb2 as direct_response_pb2
from envoy.extensions.filters.network.http_connection_manager.v3 import http_connection_manager_pb2 as hcm_pb2
from envoy.extensions.filters.network.rbac.v3 import rbac_pb2 as network_rbac_pb2
from envoy.extensions.filters.network.tcp_proxy.v3 import tcp_proxy_pb2
from envoy.extensions.transport_sockets.tls.v3 import tls_pb2
from google.protobuf import any_pb2, json_format

from gitmesh import pipeline
from gitmesh.apis import read
from gitmesh.certs import ca
from gitmesh.mesh.state import Identity, MeshState, ServiceRef
from gitmesh.sync.git import read_directory
from gitmesh.xds import resources, tls
from gitmesh.xds.bootstrap import bootstrap
from gitmesh.xds.snapshot import Encodings
from gitmesh.xds.translate import Proxy, Resources, Translator, Upstream, translate
from tests.conftest import EXAMPLE_REPO
from tests.factory import mesh_config, target
from tests.xds.envoy import ENVOY

BOOKSTORE = Proxy(
    Identity("bookstore", "bookstore"), ServiceRef("bookstore", "bookstore-v1"), 8080, 15001, 15006
)
BOOKTHIEF = Proxy(
    Identity("bookthief", "bookthief"), ServiceRef("bookthief", "bookthief"), 8080, 15001, 15006
)
BOOKBUYER = Proxy(
    Identity("bookbuyer", "bookbuyer"), ServiceRef("bookbuyer", "bookbuyer"), 8080, 15001, 15006
)
MYSQL = ServiceRef("bookwarehouse", "mysql")
WAREHOUSE = Proxy(
    Identity("bookwarehouse", "bookwarehouse"),
    ServiceRef("bookwarehouse", "bookwarehouse"),
    8080,
    15001,
    15006,
    (Upstream(MYSQL, 3306, 13306),),
)
MYSQL_V1 = Proxy(
    Identity("bookwarehouse", "mysql"), ServiceRef("bookwarehouse", "mysql-v1"), 3306, 15001, 15006
)


def example(permissive: bool = False, *extra: dict[str, Any]) -> MeshState:
    """The example repository's mesh, permissive or not, with ``extra`` objects beside it."""
    validated = pipeline.check(read_directory(str(EXAMPLE_REPO)))
    return read.mesh(
        [*(m.obj for m in validated.desired), *([mesh_config(True)] if permissive else []), *extra]
    )


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
            "envoy.filters.network.tcp_proxy": tcp_proxy_pb2.TcpProxy,
            "envoy.filters.network.direct_response": direct_response_pb2.Config,
        }[f.name]
        msg = cls()
        f.typed_config.Unpack(msg)
        out[f.name] = msg
    return out


def test_the_same_input_gives_byte_identical_output() -> None:
    assert serialized(translate(example(), BOOKSTORE)) == serialized(translate(example(), BOOKSTORE))


def test_names_follow_the_one_scheme() -> None:
    res = translate(example(permissive=True), BOOKSTORE)
    assert set(res[resources.LISTENER]) == {"outbound", "inbound"}
    assert set(res[resources.ROUTE]) == {"outbound", "inbound"}
    assert "bookstore/bookstore-v1|14001" in res[resources.CLUSTER]
    assert set(res[resources.ENDPOINT]) == set(res[resources.CLUSTER])  # the local app's is in the bootstrap


def test_assembled_outbound_routes_are_byte_for_byte_the_message() -> None:
    routes = translate(example(permissive=True), BOOKSTORE)[resources.ROUTE]["outbound"]
    built = route_pb2.RouteConfiguration(name="outbound", virtual_hosts=routes.parsed().virtual_hosts)
    assert routes.SerializeToString(deterministic=True) == built.SerializeToString(deterministic=True)
    assert len(routes.virtual_hosts) == len(built.virtual_hosts) > 5  # read like the message


def test_namespaces_share_their_outbound_hosts_bytes_once_encoded() -> None:
    translator = Translator(example(permissive=True))
    encodings = Encodings()
    store, thief = (
        encodings.encode("outbound", translator.resources(proxy)[resources.ROUTE]["outbound"])
        for proxy in (BOOKSTORE, BOOKTHIEF)
    )
    assert store is not thief  # short names differ between namespaces ...
    namespaces = {BOOKSTORE.service.namespace, BOOKTHIEF.service.namespace}
    elsewhere = [
        port
        for svc in translator.mesh.services.values()
        if svc.ref.namespace not in namespaces
        for port in svc.ports
        if port.is_http
    ]
    hosts = store.parts[2:]  # after the Any's head and the configuration's name
    shared = {id(part) for part in hosts} & {id(part) for part in thief.parts[2:]}
    assert len(shared) == len(elsewhere) > 0  # ... the hosts of other namespaces' services are the same bytes
    packed = any_pb2.Any(
        type_url=resources.ROUTE,
        value=translator.resources(BOOKSTORE)[resources.ROUTE]["outbound"].SerializeToString(),
    )
    assert b"".join(store.parts) == packed.SerializeToString(deterministic=True)


def test_proxies_share_one_cluster_map_and_one_route_map_per_namespace() -> None:
    translator = Translator(example(permissive=True))
    store, thief = translator.resources(BOOKSTORE), translator.resources(BOOKTHIEF)
    # Each presents its own identity's certificate, under the one name every sidecar uses.
    assert store[resources.CLUSTER] is thief[resources.CLUSTER]
    assert store[resources.ENDPOINT] is thief[resources.ENDPOINT]
    again = translator.resources(BOOKSTORE)
    assert again[resources.ROUTE]["outbound"] is store[resources.ROUTE]["outbound"]
    assert thief[resources.ROUTE]["outbound"] is not store[resources.ROUTE]["outbound"]


def test_the_split_becomes_weighted_clusters_found_by_host() -> None:
    routes = translate(example(permissive=True), BOOKSTORE)[resources.ROUTE]["outbound"]
    (host,) = [h for h in routes.virtual_hosts if h.name == "bookstore/bookstore|14001"]
    assert "bookstore" in host.domains  # same namespace as the proxy: the short name works
    assert {"bookstore.bookstore", "bookstore.bookstore.svc.cluster.local:14001"} <= set(host.domains)
    weights = [(c.name, c.weight.value) for c in host.routes[0].route.weighted_clusters.clusters]
    assert weights == [("bookstore/bookstore-v1|14001", 75), ("bookstore/bookstore-v2|14001", 25)]
    (warehouse,) = [h for h in routes.virtual_hosts if h.name == "bookwarehouse/bookwarehouse|14001"]
    assert "bookwarehouse" not in warehouse.domains  # another namespace: only qualified names
    assert warehouse.routes[0].route.cluster == "bookwarehouse/bookwarehouse|14001"


def outbound_view(res: Resources) -> tuple[set[str], set[str], set[str]]:
    """The clusters, load assignments and outbound virtual hosts a proxy is sent."""
    hosts = {h.name for h in res[resources.ROUTE]["outbound"].virtual_hosts}
    return set(res[resources.CLUSTER]), set(res[resources.ENDPOINT]), hosts


def test_a_proxy_is_sent_only_the_services_its_identity_may_call() -> None:
    mesh = example()
    bookstore = {"bookstore/bookstore|14001", "bookstore/bookstore-v1|14001", "bookstore/bookstore-v2|14001"}
    # bookbuyer may call the bookstore identity, which backs the bookstore namespace's services.
    assert outbound_view(translate(mesh, BOOKBUYER)) == (bookstore, bookstore, bookstore | {"refused"})
    # No TrafficTarget names bookthief: it is sent no cluster, no endpoint, no route of anyone's,
    # only the refusals of what it may not call.
    assert outbound_view(translate(mesh, BOOKTHIEF)) == (set(), set(), {"refused"})
    clusters, _, _ = outbound_view(translate(mesh, BOOKSTORE))
    assert clusters and all(name.startswith("bookwarehouse/") for name in clusters)
    # Permissive: every service, as every caller may call it, and nothing is refused.
    every = {f"{s.ref.namespace}/{s.ref.name}|{p.port}" for s in mesh.services.values() for p in s.ports}
    clusters, _, hosts = outbound_view(translate(example(permissive=True), BOOKTHIEF))
    assert clusters == every and "refused" not in hosts


def refusals(res: Resources) -> dict[str, str]:
    """The outbound refusals' policies: the service refused -> the Host pattern it is known by."""
    (host,) = [h for h in res[resources.ROUTE]["outbound"].virtual_hosts if h.name == "refused"]
    (route,) = host.routes
    rules = http_rbac_pb2.RBACPerRoute()
    route.typed_per_filter_config["envoy.filters.http.rbac"].Unpack(rules)
    assert rules.rbac.rules.action == rules.rbac.rules.DENY and rules.rbac.track_per_rule_stats
    return {
        name: p.permissions[0].header.string_match.safe_regex.regex
        for name, p in rules.rbac.rules.policies.items()
    }


def test_a_call_the_mesh_refuses_is_counted_per_destination_by_the_callers_sidecar() -> None:
    mesh = example()
    res = translate(mesh, BOOKTHIEF)
    # Every HTTP service of the mesh, for bookthief may call none of them; bookbuyer only those
    # outside the bookstore's namespace.
    http = {str(s.ref) for s in mesh.services.values() if any(p.is_http for p in s.ports)}
    assert set(refusals(res)) == http
    assert "bookstore/bookstore" not in refusals(translate(mesh, BOOKBUYER))
    pattern = re.compile(refusals(res)["bookstore/bookstore"])
    for host in ("bookstore.bookstore", "bookstore.bookstore:14001", "bookstore.bookstore.svc.cluster.local"):
        assert pattern.fullmatch(host), host
    for host in ("bookstore", "bookstore-v1.bookstore", "bookstore.bookstorex", "example.org"):
        assert not pattern.fullmatch(host), host
    # The short name is the caller's namespace's only.
    assert re.fullmatch(refusals(res)["bookthief/bookthief"], "bookthief:14001")
    # The RBAC filter that refuses comes first on the outbound listener, and allows without the route's.
    outbound = network_filters(res[resources.LISTENER]["outbound"])[
        "envoy.filters.network.http_connection_manager"
    ]
    first = outbound.http_filters[0]
    assert first.name == "envoy.filters.http.rbac" and not _unpacked(first.typed_config).HasField("rules")
    # With enableEgress, the catch-all is egress's: nothing is refused.
    opened = translate(replace(mesh, egress_open=True), BOOKTHIEF)
    assert "refused" not in {h.name for h in opened[resources.ROUTE]["outbound"].virtual_hosts}


def test_callers_share_the_bytes_of_each_refusal() -> None:
    """A caller may not call most of a large mesh: each refused service's policy is written once and
    shared by every caller's routes (thousands of callers, thousands of services), not copied."""
    translator = Translator(example())
    thief, buyer = (translator.resources(p)[resources.ROUTE]["outbound"] for p in (BOOKTHIEF, BOOKBUYER))
    assert "bookwarehouse/bookwarehouse" in refusals({resources.ROUTE: {"outbound": thief}})

    def policy(routes: Any) -> bytes:
        (part,) = [p for p in routes.serialized_parts() if b"bookwarehouse/bookwarehouse" in p]
        assert isinstance(part, bytes)
        return part

    assert policy(thief) is policy(buyer)


def _unpacked(typed: any_pb2.Any) -> http_rbac_pb2.RBAC:
    rbac = http_rbac_pb2.RBAC()
    typed.Unpack(rbac)
    return rbac


def test_proxies_reaching_the_same_namespaces_share_their_maps() -> None:
    translator = Translator(example())
    buyer = translator.resources(BOOKBUYER)
    again = translator.resources(BOOKBUYER)
    assert again[resources.CLUSTER] is buyer[resources.CLUSTER]
    assert again[resources.ROUTE]["outbound"] is buyer[resources.ROUTE]["outbound"]
    assert translator.resources(BOOKTHIEF)[resources.CLUSTER] is not buyer[resources.CLUSTER]


def test_scopes_that_reach_a_service_share_its_cluster_and_load_assignment() -> None:
    # bookthief may call both namespaces: a scope of its own, overlapping bookbuyer's and bookstore's.
    thief = [
        target(ns, f"{ns}-thief", ns, ["bookthief/bookthief"], f"{ns}-service-routes")
        for ns in ("bookstore", "bookwarehouse")
    ]
    translator = Translator(example(False, *thief))
    wide, buyer, store = (translator.resources(p) for p in (BOOKTHIEF, BOOKBUYER, BOOKSTORE))
    for kind in (resources.CLUSTER, resources.ENDPOINT):
        assert wide[kind] is not buyer[kind] and wide[kind] is not store[kind]
        assert set(wide[kind]) == set(buyer[kind]) | set(store[kind]) != set()
        # One message per service port, whichever scopes reach it (not one per scope).
        for narrow in (buyer, store):
            assert all(wide[kind][name] is message for name, message in narrow[kind].items())


def test_inbound_admits_only_allowed_callers_on_their_routes() -> None:
    inbound = translate(example(), BOOKSTORE)[resources.LISTENER]["inbound"]
    filters = network_filters(inbound)
    callers = filters["envoy.filters.network.rbac"].rules.policies["callers"].principals
    assert [p.authenticated.principal_name.exact for p in callers] == [
        "spiffe://cluster.local/ns/bookbuyer/sa/bookbuyer"
    ]
    policy = inbound_rules(translate(example(), BOOKSTORE)).rbac.rules.policies["bookbuyer/bookbuyer"]
    assert len(policy.permissions) == 2  # books-bought, buy-a-book
    rules = policy.permissions[0].and_rules.rules
    # pathRegex is anchored at the start of the path only (the SMI text); Envoy matches the whole path.
    assert rules[0].url_path.path.safe_regex.regex == "(?:/books-bought).*"


def test_a_proxy_nobody_may_call_refuses_everyone() -> None:
    filters = network_filters(translate(example(), BOOKTHIEF)[resources.LISTENER]["inbound"])
    (principal,) = filters["envoy.filters.network.rbac"].rules.policies["callers"].principals
    assert principal.not_id.any


def inbound_rules(res: Resources) -> http_rbac_pb2.RBACPerRoute:
    (host,) = res[resources.ROUTE]["inbound"].virtual_hosts
    rules = http_rbac_pb2.RBACPerRoute()
    host.typed_per_filter_config["envoy.filters.http.rbac"].Unpack(rules)
    return rules


def test_route_rules_live_in_the_route_configuration_so_changes_reach_open_connections() -> None:
    # The listener's HTTP RBAC filter is the same whatever the TrafficTargets say: changing access
    # changes only RDS, which applies to the next request on every connection.
    strict, permissive = example(), example(permissive=True)
    listeners = [translate(m, BOOKSTORE)[resources.LISTENER]["inbound"] for m in (strict, permissive)]
    hcms = [network_filters(x)["envoy.filters.network.http_connection_manager"] for x in listeners]
    assert hcms[0] == hcms[1]
    deny_all = http_rbac_pb2.RBAC()
    hcms[0].http_filters[0].typed_config.Unpack(deny_all)
    assert deny_all.rules.action == deny_all.rules.ALLOW and not deny_all.rules.policies


def test_permissive_mode_has_no_rbac_but_still_requires_a_mesh_certificate() -> None:
    res = translate(example(permissive=True), BOOKTHIEF)
    inbound = res[resources.LISTENER]["inbound"]
    assert list(network_filters(inbound)) == ["envoy.filters.network.http_connection_manager"]
    assert not inbound_rules(res).HasField("rbac")  # the filter is off on the route
    assert downstream_tls(inbound.filter_chains[0]).require_client_certificate.value


def downstream_tls(chain: Any) -> tls_pb2.DownstreamTlsContext:
    context = tls_pb2.DownstreamTlsContext()
    chain.transport_socket.typed_config.Unpack(context)
    return context


def test_an_upstream_is_a_local_port_proxying_tcp_by_the_split() -> None:
    listener = translate(example(), WAREHOUSE)[resources.LISTENER]["outbound|bookwarehouse/mysql|3306"]
    assert listener.address.socket_address.port_value == 13306
    tcp = network_filters(listener)["envoy.filters.network.tcp_proxy"]
    assert [(c.name, c.weight) for c in tcp.weighted_clusters.clusters] == [
        ("bookwarehouse/mysql-v1|3306", 90),
        ("bookwarehouse/mysql-v2|3306", 10),
    ]


def test_an_upstream_without_a_split_goes_to_the_service() -> None:
    proxy = replace(WAREHOUSE, upstreams=(Upstream(ServiceRef("bookwarehouse", "mysql-v2"), 3306, 13307),))
    listener = translate(example(), proxy)[resources.LISTENER]["outbound|bookwarehouse/mysql-v2|3306"]
    assert (
        network_filters(listener)["envoy.filters.network.tcp_proxy"].cluster == "bookwarehouse/mysql-v2|3306"
    )


def test_a_tcp_service_accepts_only_tcproute_callers_in_the_handshake() -> None:
    inbound = translate(example(), MYSQL_V1)[resources.LISTENER]["inbound"]
    (chain,) = inbound.filter_chains
    context = downstream_tls(chain)
    validation = context.common_tls_context.combined_validation_context
    sans = [m.matcher.exact for m in validation.default_validation_context.match_typed_subject_alt_names]
    assert sans == ["spiffe://cluster.local/ns/bookwarehouse/sa/bookwarehouse"]
    assert validation.validation_context_sds_secret_config.name == "trust-bundle"
    assert context.require_client_certificate.value
    assert network_filters(inbound)["envoy.filters.network.tcp_proxy"].cluster == "local|3306"


def test_an_http_only_permission_does_not_open_a_tcp_service() -> None:
    objects = [m.obj for m in pipeline.check(read_directory(str(EXAMPLE_REPO))).desired]
    for o in objects:
        if o["kind"] == "TrafficTarget" and o["metadata"]["name"] == "bookwarehouse-access-mysql":
            o["spec"]["rules"] = [{"kind": "HTTPRouteGroup", "name": "bookwarehouse-service-routes"}]
    inbound = translate(read.mesh(objects), MYSQL_V1)[resources.LISTENER]["inbound"]
    assert list(network_filters(inbound)) == ["envoy.filters.network.direct_response"]
    assert not inbound.filter_chains[0].HasField("transport_socket")


def test_permissive_tcp_admits_every_mesh_certificate() -> None:
    (chain,) = translate(example(permissive=True), MYSQL_V1)[resources.LISTENER]["inbound"].filter_chains
    common = downstream_tls(chain).common_tls_context
    assert common.validation_context_sds_secret_config.name == "trust-bundle"
    assert not common.HasField("combined_validation_context")


def test_a_split_with_matches_takes_only_the_requests_they_match() -> None:
    objects = [m.obj for m in pipeline.check(read_directory(str(EXAMPLE_REPO))).desired]
    for o in objects:
        if o["kind"] == "TrafficSplit" and o["metadata"]["name"] == "bookstore-split":
            o["spec"]["matches"] = [{"kind": "HTTPRouteGroup", "name": "bookstore-service-routes"}]
    routes = translate(read.mesh(objects), BOOKBUYER)[resources.ROUTE]["outbound"]
    (host,) = [h for h in routes.virtual_hosts if h.name == "bookstore/bookstore|14001"]
    *matched, rest = host.routes
    assert [r.match.safe_regex.regex for r in matched] == ["(?:/books-bought).*", "(?:/buy-a-book/new).*"]
    headers = {h.name: h.string_match.safe_regex.regex for h in matched[0].match.headers}
    assert headers == {"user-agent": ".*-http-client/.*", ":method": "(?:GET)"}
    assert all(len(r.route.weighted_clusters.clusters) == 2 for r in matched)
    assert rest.match.prefix == "/" and rest.route.cluster == "bookstore/bookstore|14001"


def test_sidecars_talk_mtls_presenting_their_workload_certificate() -> None:
    res = translate(example(), BOOKSTORE, trust_domain="mesh.test")
    inbound = tls_pb2.DownstreamTlsContext()
    res[resources.LISTENER]["inbound"].filter_chains[0].transport_socket.typed_config.Unpack(inbound)
    assert inbound.require_client_certificate.value
    common = inbound.common_tls_context
    assert [c.name for c in common.tls_certificate_sds_secret_configs] == ["workload-cert"]
    assert common.validation_context_sds_secret_config.name == "trust-bundle"
    # Outbound: its own certificate; the server must hold an identity of the service's namespace.
    upstream = tls_pb2.UpstreamTlsContext()
    res[resources.CLUSTER]["bookwarehouse/bookwarehouse|14001"].transport_socket.typed_config.Unpack(upstream)
    common = upstream.common_tls_context
    assert [c.name for c in common.tls_certificate_sds_secret_configs] == ["workload-cert"]
    validation = common.combined_validation_context
    assert validation.validation_context_sds_secret_config.name == "trust-bundle"
    (san,) = validation.default_validation_context.match_typed_subject_alt_names
    assert san.matcher.prefix == "spiffe://mesh.test/ns/bookwarehouse/sa/"
    # The outbound listener is what the app calls: plaintext on the loopback.
    assert not res[resources.LISTENER]["outbound"].filter_chains[0].HasField("transport_socket")


def test_the_secrets_hold_the_identity_certificate_and_the_bundle() -> None:
    got = tls.secrets("CERT", "KEY", ["ROOT1\n", "ROOT2\n"])
    assert set(got) == {"workload-cert", "trust-bundle"}
    assert got["workload-cert"].tls_certificate.private_key.inline_string == "KEY"
    assert got["trust-bundle"].validation_context.trusted_ca.inline_string == "ROOT1\nROOT2\n"


def as_static_bootstrap(res: Resources, proxy: Proxy) -> dict[str, Any]:
    """The proxy's resources as a static bootstrap, so Envoy's validate mode can judge them."""

    def js(m: Any) -> dict[str, Any]:
        # Secrets become static ones here: they are named without an SDS source.
        return json.loads(json_format.MessageToJson(m).replace('"sdsConfig"', '"_sds"'), object_hook=_no_sds)

    own = bootstrap(proxy, xds_host="127.0.0.1", xds_port=1, admin_port=0)["static_resources"]["clusters"]
    # A pod's sidecar has no local app cluster: traffic goes on to its original destination.
    clusters = [c for c in own if c["name"] != "gitmesh-xds" and proxy.pod is None]
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
        default = [d["defaultFilterChain"]] if "defaultFilterChain" in d else []
        for chain in [*d.get("filterChains", []), *default]:
            for f in chain["filters"]:
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
            "secrets": [js(secret) for secret in _secrets(proxy).values()],
        },
    }


def _no_sds(d: dict[str, Any]) -> dict[str, Any]:
    d.pop("_sds", None)
    return d


def _secrets(proxy: Proxy) -> dict[str, Any]:
    now = datetime.datetime.now(datetime.UTC)
    root = ca.new_root("cluster.local", now)
    issued = ca.issue(root, "cluster.local", proxy.identity, now)
    return tls.secrets(issued.cert_pem, issued.key_pem, [root.root_pem])


@pytest.mark.integration
@pytest.mark.parametrize(
    "proxy", [BOOKSTORE, BOOKTHIEF, WAREHOUSE, MYSQL_V1], ids=["bookstore", "bookthief", "warehouse", "mysql"]
)
@pytest.mark.parametrize("permissive", [False, True], ids=["rbac", "permissive"])
def test_real_envoy_accepts_the_translation(proxy: Proxy, permissive: bool, tmp_path: Path) -> None:
    config = tmp_path / "bootstrap.json"
    config.write_text(json.dumps(as_static_bootstrap(translate(example(permissive), proxy), proxy)))
    result = subprocess.run(
        [ENVOY, "--mode", "validate", "-c", str(config), "--use-dynamic-base-id", "-l", "error"],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode == 0, result.stdout[-2000:] + result.stderr[-2000:]
    assert "OK" in result.stdout

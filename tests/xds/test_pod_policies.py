"""Policies on an injected pod's sidecar, as on a process sidecar: Egress on the transparent
outbound listener (HTTP by Host and TLS by server name on their ports, TCP by original destination
address and port, wildcard hosts through the dynamic forward proxy), MeshConfig enableEgress for
the rest, IngressBackend and local rate limits on the transparent inbound listener; and real Envoy
accepting each."""

from __future__ import annotations

import json
import subprocess
from dataclasses import replace
from pathlib import Path
from typing import Any

import pytest
from envoy.config.cluster.v3 import cluster_pb2
from envoy.config.listener.v3 import listener_pb2
from envoy.extensions.filters.http.rbac.v3 import rbac_pb2 as http_rbac_pb2
from envoy.extensions.filters.network.http_connection_manager.v3 import http_connection_manager_pb2 as hcm_pb2
from envoy.extensions.filters.network.local_ratelimit.v3 import local_rate_limit_pb2 as network_rate_pb2
from envoy.extensions.filters.network.rbac.v3 import rbac_pb2 as network_rbac_pb2
from envoy.extensions.filters.network.tcp_proxy.v3 import tcp_proxy_pb2

from gitmesh.mesh.state import (
    ConnectionLimits,
    EgressRule,
    Identity,
    IngressRule,
    MeshState,
    RateLimit,
    ServiceRef,
)
from gitmesh.xds import resources
from gitmesh.xds.translate import INBOUND_PASSTHROUGH, PASSTHROUGH, Pod, Proxy, Translator
from tests.xds.envoy import ENVOY
from tests.xds.test_translate import BOOKTHIEF, as_static_bootstrap, example
from tests.xds.test_transparent import BUYER, MYSQL_V1, V1_PROXY, WAREHOUSE, cluster_mesh

THIEF = Identity("bookthief", "bookthief")
V1 = ServiceRef("bookstore", "bookstore-v1")


def with_egress(*, open_: bool = False) -> MeshState:
    buyer = BUYER.identity
    return replace(
        cluster_mesh(),
        egress=(
            EgressRule(buyer, "api.example.com", 80, "http"),
            EgressRule(buyer, "api.example.com", 443, "tls"),
            EgressRule(buyer, "*.example.org", 8080, "http"),
            EgressRule(buyer, "*.example.org", 8443, "tls"),
            EgressRule(buyer, "", 5432, "tcp", ranges=("10.1.0.0/16",)),
            EgressRule(buyer, "", 5432, "tcp", ranges=("192.0.2.7/32",)),
            EgressRule(buyer, "", 22, "tcp"),
            EgressRule(buyer, "ssh.example.com", 22, "http"),  # TCP to any address covers it
        ),
        egress_open=open_,
    )


def with_inbound_policies(ingress: IngressRule) -> MeshState:
    return replace(
        cluster_mesh(),
        ingress=(ingress,),
        limits=(
            ConnectionLimits(
                V1, connection_rate=RateLimit(100, 1), route_rates=(("/buy", RateLimit(1, 60)),)
            ),
            ConnectionLimits(ServiceRef("bookwarehouse", "mysql-v1"), connection_rate=RateLimit(10, 60, 5)),
        ),
    )


MTLS_INGRESS = IngressRule(V1, 8080, (THIEF,), True)
PLAIN_INGRESS = IngressRule(V1, 8080, (), False, ("10.0.0.0/8",))


def _chains(listener: listener_pb2.Listener) -> dict[str, listener_pb2.FilterChain]:
    return {c.name: c for c in listener.filter_chains}


def _unpack(chain: listener_pb2.FilterChain, cls: type[Any]) -> Any:
    msg = cls()
    (found,) = [f for f in chain.filters if f.typed_config.Is(cls.DESCRIPTOR)]
    found.typed_config.Unpack(msg)
    return msg


def test_a_pods_egress_is_on_its_transparent_outbound_listener_only() -> None:
    translator = Translator(with_egress())
    res = translator.resources(BUYER)
    outbound = res[resources.LISTENER]["outbound"]
    chains = _chains(outbound)
    # HTTP by Host, on whatever address the port was called at; routed as host sidecars route it.
    http = chains["egress|http:80"]
    assert http.filter_chain_match.destination_port.value == 80 and not http.filter_chain_match.prefix_ranges
    assert _unpack(http, hcm_pb2.HttpConnectionManager).rds.route_config_name == "outbound"
    hosts = {h.name for h in res[resources.ROUTE]["outbound"].virtual_hosts}
    assert "egress|api.example.com:80" in hosts
    assert res[resources.CLUSTER]["egress|api.example.com:80"].type == cluster_pb2.Cluster.LOGICAL_DNS
    # TLS by server name, on its port.
    tls = chains["egress|api.example.com:443"].filter_chain_match
    assert (tls.destination_port.value, list(tls.server_names), tls.transport_protocol) == (
        443,
        ["api.example.com"],
        "tls",
    )
    assert "envoy.filters.listener.tls_inspector" in [f.name for f in outbound.listener_filters]
    # TCP by original destination: the ranges of every rule for the port, on to where it was sent.
    tcp = chains["egress|tcp:5432"]
    ranges = [(r.address_prefix, r.prefix_len.value) for r in tcp.filter_chain_match.prefix_ranges]
    assert ranges == [("10.1.0.0", 16), ("192.0.2.7", 32)]
    assert _unpack(tcp, tcp_proxy_pb2.TcpProxy).cluster == PASSTHROUGH
    assert not chains["egress|tcp:22"].filter_chain_match.prefix_ranges
    assert "egress|http:22" not in chains  # same match as TCP's to any address: TCP passes it already
    # Another pod of the mesh without an Egress: none of it, and what it sends outside is closed.
    thief = Proxy(
        THIEF,
        ServiceRef("bookthief", ""),
        0,
        15001,
        15006,
        pod=Pod("bookthief", "t-1", "uid-t", "10.244.0.13"),
    )
    other = translator.resources(thief)
    assert not [c for c in other[resources.LISTENER]["outbound"].filter_chains if c.name.startswith("egress")]
    assert not [name for name in other[resources.CLUSTER] if name.startswith("egress")]
    assert other[resources.LISTENER]["outbound"].default_filter_chain.name == "outbound|refused"


def test_enable_egress_lets_the_rest_pass_through() -> None:
    outbound = Translator(with_egress(open_=True)).resources(BUYER)[resources.LISTENER]["outbound"]
    assert _unpack(outbound.default_filter_chain, tcp_proxy_pb2.TcpProxy).cluster == PASSTHROUGH
    assert "egress|tcp:5432" in _chains(outbound)  # Egress policies are kept: they still say who may


def test_a_wildcard_host_goes_through_the_dynamic_forward_proxy() -> None:
    res = Translator(with_egress()).resources(BUYER)
    cluster = res[resources.CLUSTER]["egress|*.example.org:8080"]
    assert cluster.cluster_type.name == "envoy.clusters.dynamic_forward_proxy"
    (host,) = [
        h for h in res[resources.ROUTE]["outbound"].virtual_hosts if h.name == "egress|*.example.org:8080"
    ]
    assert list(host.domains) == ["*.example.org:8080"]
    # The HTTP filter resolves the Host of requests routed to that cluster, on every HTTP chain.
    chains = _chains(res[resources.LISTENER]["outbound"])
    filters = [
        f.name for f in _unpack(chains["egress|http:8080"], hcm_pb2.HttpConnectionManager).http_filters
    ]
    assert filters == [
        "envoy.filters.http.rbac",  # the refusals'
        "envoy.filters.http.dynamic_forward_proxy",
        "envoy.filters.http.router",
    ]
    # TLS: the server name, resolved by the SNI forward proxy filter, then proxied to its cluster.
    tls = chains["egress|*.example.org:8443"]
    assert list(tls.filter_chain_match.server_names) == ["*.example.org"]
    assert [f.name for f in tls.filters] == [
        "envoy.filters.network.sni_dynamic_forward_proxy",
        "envoy.filters.network.tcp_proxy",
    ]


def test_an_ingress_only_pod_port_admits_its_ingress_alone_with_routes_of_its_own() -> None:
    res = Translator(with_inbound_policies(MTLS_INGRESS)).resources(V1_PROXY)
    chain = _chains(res[resources.LISTENER]["inbound"])["inbound|8080"]
    callers = _unpack(chain, network_rbac_pb2.RBAC)
    principals = str(callers.rules.policies["callers"].principals)
    assert "/ns/bookthief/sa/bookthief" in principals and "bookbuyer" not in principals
    assert _unpack(chain, hcm_pb2.HttpConnectionManager).rds.route_config_name == "inbound|8080"
    (host,) = res[resources.ROUTE]["inbound|8080"].virtual_hosts
    rules = http_rbac_pb2.RBACPerRoute()
    host.typed_per_filter_config["envoy.filters.http.rbac"].Unpack(rules)
    assert list(rules.rbac.rules.policies) == ["bookthief/bookthief"]
    assert host.routes[-1].route.cluster == INBOUND_PASSTHROUGH


def test_a_plaintext_ingress_pod_port_closes_what_its_chain_does_not_take() -> None:
    res = Translator(with_inbound_policies(PLAIN_INGRESS)).resources(V1_PROXY)
    inbound = res[resources.LISTENER]["inbound"]
    chains = _chains(inbound)
    plain = chains["inbound|8080"].filter_chain_match
    assert (plain.destination_port.value, plain.transport_protocol) == (8080, "raw_buffer")
    assert [(r.address_prefix, r.prefix_len.value) for r in plain.source_prefix_ranges] == [("10.0.0.0", 8)]
    # Plaintext from elsewhere and TLS (mesh callers) to that port are closed, never passed through.
    for name, transport in (("inbound|8080|refused", "raw_buffer"), ("inbound|8080|tls", "")):
        assert chains[name].filter_chain_match.transport_protocol == transport
        assert [f.name for f in chains[name].filters] == ["envoy.filters.network.direct_response"]
    assert "envoy.filters.listener.tls_inspector" in [f.name for f in inbound.listener_filters]
    assert inbound.default_filter_chain.name == PASSTHROUGH  # other ports: the app's own business


def test_rate_limits_hold_on_the_pods_the_limited_service_points_at() -> None:
    mesh = with_inbound_policies(MTLS_INGRESS)
    res = Translator(mesh).resources(V1_PROXY)
    chain = _chains(res[resources.LISTENER]["inbound"])["inbound|8080"]
    names = [f.name for f in chain.filters]
    assert names.index("envoy.filters.network.rbac") < names.index("envoy.filters.network.local_ratelimit")
    assert _unpack(chain, network_rate_pb2.LocalRateLimit).token_bucket.max_tokens == 100
    routes = res[resources.ROUTE]["inbound|8080"].virtual_hosts[0].routes
    assert (
        routes[0].name == "rate|/buy"
        and "envoy.filters.http.local_ratelimit" in routes[0].typed_per_filter_config
    )
    # A TCP port: the bucket (rate + burst) before its proxying.
    tcp = _chains(Translator(mesh).resources(MYSQL_V1)[resources.LISTENER]["inbound"])["inbound|3306"]
    assert [f.name for f in tcp.filters] == [
        "envoy.filters.network.local_ratelimit",
        "envoy.filters.network.tcp_proxy",
    ]
    assert _unpack(tcp, network_rate_pb2.LocalRateLimit).token_bucket.max_tokens == 15
    # A caller's pod is not limited.
    assert "inbound|8080" not in Translator(mesh).resources(WAREHOUSE)[resources.ROUTE]


@pytest.mark.integration
@pytest.mark.parametrize(
    ("mesh", "proxy"),
    [
        (with_egress, BUYER),
        (lambda: with_egress(open_=True), BUYER),
        (lambda: with_inbound_policies(MTLS_INGRESS), V1_PROXY),
        (lambda: with_inbound_policies(PLAIN_INGRESS), V1_PROXY),
        (lambda: with_inbound_policies(replace(PLAIN_INGRESS, source_ranges=())), V1_PROXY),
        (lambda: with_inbound_policies(MTLS_INGRESS), MYSQL_V1),
        (lambda: replace(example(), egress_open=True), BOOKTHIEF),
    ],
    ids=[
        "egress",
        "egress open",
        "mtls ingress",
        "plaintext ingress",
        "ingress without address",
        "tcp rate",
        "process sidecar, egress open",
    ],
)
def test_real_envoy_accepts_a_pods_policies(mesh: Any, proxy: Proxy, tmp_path: Path) -> None:
    config = tmp_path / "bootstrap.json"
    config.write_text(json.dumps(as_static_bootstrap(Translator(mesh()).resources(proxy), proxy)))
    result = subprocess.run(
        [ENVOY, "--mode", "validate", "-c", str(config), "--use-dynamic-base-id", "-l", "error"],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode == 0, result.stdout[-2000:] + result.stderr[-2000:]


def test_enable_egress_on_a_process_sidecar_sends_unknown_hosts_by_name() -> None:
    res = Translator(replace(example(), egress_open=True)).resources(BOOKTHIEF)
    hosts = res[resources.ROUTE]["outbound"].virtual_hosts
    assert (hosts[-1].name, list(hosts[-1].domains)) == ("egress|*", ["*"])
    assert hosts[-1].routes[0].route.cluster == "egress|*"
    cluster = res[resources.CLUSTER]["egress|*"]
    assert cluster.cluster_type.name == "envoy.clusters.dynamic_forward_proxy"
    hcm = _unpack(res[resources.LISTENER]["outbound"].filter_chains[0], hcm_pb2.HttpConnectionManager)
    assert "envoy.filters.http.dynamic_forward_proxy" in [f.name for f in hcm.http_filters]
    assert "egress|*" not in Translator(example()).resources(BOOKTHIEF)[resources.CLUSTER]
    # A proxyless gRPC client gets no catch-all: it has no forward proxy to send it to.
    grpc = Translator(replace(example(), egress_open=True)).resources(replace(BOOKTHIEF, grpc=True))
    assert "egress|*" not in {h.name for h in grpc[resources.ROUTE]["outbound"].virtual_hosts}

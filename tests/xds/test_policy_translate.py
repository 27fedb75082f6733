"""Policies in the Envoy translation: retries and faults on the caller's outbound virtual host,
connection limits as the destination cluster's circuit breakers, egress as DNS clusters reached by
Host or server name, ingress-only backend ports; and real Envoy accepting them."""

from __future__ import annotations

import json
import subprocess
from collections.abc import Callable
from dataclasses import replace
from pathlib import Path

import pytest
from envoy.extensions.filters.http.fault.v3 import fault_pb2
from envoy.extensions.filters.http.local_ratelimit.v3 import local_rate_limit_pb2 as http_rate_pb2
from envoy.extensions.filters.http.rbac.v3 import rbac_pb2 as http_rbac_pb2
from envoy.extensions.filters.network.http_connection_manager.v3 import http_connection_manager_pb2 as hcm_pb2
from envoy.extensions.filters.network.local_ratelimit.v3 import local_rate_limit_pb2 as network_rate_pb2
from envoy.extensions.filters.network.rbac.v3 import rbac_pb2 as network_rbac_pb2
from envoy.type.v3 import http_status_pb2

from gitmesh.apis.policy import RATE_LIMIT_STATUSES
from gitmesh.mesh.state import (
    ConnectionLimits,
    EgressRule,
    Fault,
    HttpMatch,
    IngressRule,
    MeshState,
    RateLimit,
    RetryPolicy,
    ServiceRef,
)
from gitmesh.xds import resources
from gitmesh.xds.translate import Proxy, Resources, translate
from tests.xds.envoy import ENVOY
from tests.xds.test_translate import BOOKBUYER, BOOKSTORE, BOOKTHIEF, MYSQL_V1, as_static_bootstrap, example
from tests.xds.test_translate import WAREHOUSE as WAREHOUSE_PROXY

WAREHOUSE = ServiceRef("bookwarehouse", "bookwarehouse")
HOST = "bookwarehouse/bookwarehouse|14001"


def with_policies() -> MeshState:
    return replace(
        example(permissive=True),
        retries=(RetryPolicy(BOOKBUYER.identity, WAREHOUSE, "5xx,reset", 5, 250, 10),),
        limits=(
            ConnectionLimits(WAREHOUSE, max_connections=2, max_pending_requests=1, connect_timeout_ms=500),
            ConnectionLimits(ServiceRef("bookwarehouse", "mysql-v1"), connection_rate=RateLimit(10, 60, 5)),
            ConnectionLimits(
                ServiceRef("bookstore", "bookstore-v1"),
                connection_rate=RateLimit(100, 1),
                request_rate=RateLimit(3, 60, 0, 503, (("x-limited", "yes"),)),
            ),
            ConnectionLimits(
                ServiceRef("bookstore", "bookstore-v2"), route_rates=(("/buy", RateLimit(1, 60)),)
            ),
        ),
        faults=(Fault(WAREHOUSE, BOOKTHIEF.identity, 25.0, 100, 10.5, 503),),
        egress=(
            EgressRule(BOOKBUYER.identity, "api.example.com", 80, "http"),
            EgressRule(BOOKBUYER.identity, "api.example.com", 443, "tls"),
        ),
        ingress=(IngressRule(WAREHOUSE, WAREHOUSE_PROXY.app_port, (BOOKTHIEF.identity,), True),),
    )


def virtual_host(res: Resources, name: str = HOST) -> object:
    (host,) = [h for h in res[resources.ROUTE]["outbound"].virtual_hosts if h.name == name]
    return host


def test_retry_is_on_the_source_callers_virtual_host_only() -> None:
    mesh = with_policies()
    retry = virtual_host(translate(mesh, BOOKBUYER)).retry_policy  # type: ignore[attr-defined]
    assert (retry.retry_on, retry.num_retries.value) == ("5xx,reset", 5)
    assert retry.per_try_timeout.ToMilliseconds() == 250
    assert retry.retry_back_off.base_interval.ToMilliseconds() == 10
    assert not virtual_host(translate(mesh, BOOKSTORE)).HasField("retry_policy")  # type: ignore[attr-defined]


def test_connection_limits_are_the_destination_clusters_circuit_breakers() -> None:
    cluster = translate(with_policies(), BOOKSTORE)[resources.CLUSTER][HOST]
    (thresholds,) = cluster.circuit_breakers.thresholds  # type: ignore[attr-defined]
    assert (thresholds.max_connections.value, thresholds.max_pending_requests.value) == (2, 1)
    assert not thresholds.HasField("max_requests")  # not set: Envoy's default
    assert cluster.connect_timeout.ToMilliseconds() == 500  # type: ignore[attr-defined]


def test_fault_reaches_only_its_source_and_the_outbound_listener_has_the_filter() -> None:
    mesh = with_policies()
    thief = translate(mesh, BOOKTHIEF)
    config = fault_pb2.HTTPFault()
    virtual_host(thief).typed_per_filter_config["envoy.filters.http.fault"].Unpack(config)  # type: ignore[attr-defined]
    assert config.delay.fixed_delay.ToMilliseconds() == 100
    assert config.delay.percentage.numerator == 250_000
    assert (config.abort.http_status, config.abort.percentage.numerator) == (503, 105_000)
    assert "envoy.filters.http.fault" not in virtual_host(translate(mesh, BOOKBUYER)).typed_per_filter_config  # type: ignore[attr-defined]
    hcm = hcm_pb2.HttpConnectionManager()
    thief[resources.LISTENER]["outbound"].filter_chains[0].filters[0].typed_config.Unpack(hcm)  # type: ignore[attr-defined]
    assert [f.name for f in hcm.http_filters] == ["envoy.filters.http.fault", "envoy.filters.http.router"]


def test_a_mesh_without_faults_has_no_fault_filter() -> None:
    hcm = hcm_pb2.HttpConnectionManager()
    listener = translate(example(permissive=True), BOOKBUYER)[resources.LISTENER]["outbound"]
    listener.filter_chains[0].filters[0].typed_config.Unpack(hcm)  # type: ignore[attr-defined]
    assert [f.name for f in hcm.http_filters] == ["envoy.filters.http.router"]


def test_http_egress_is_a_virtual_host_and_a_dns_cluster_of_its_source_only() -> None:
    mesh = with_policies()
    buyer = translate(mesh, BOOKBUYER)
    host = virtual_host(buyer, "egress|api.example.com:80")
    assert list(host.domains) == ["api.example.com:80", "api.example.com"]  # type: ignore[attr-defined]
    assert host.routes[0].route.cluster == "egress|api.example.com:80"  # type: ignore[attr-defined]
    cluster = buyer[resources.CLUSTER]["egress|api.example.com:80"]
    address = cluster.load_assignment.endpoints[0].lb_endpoints[0].endpoint.address.socket_address  # type: ignore[attr-defined]
    assert (address.address, address.port_value) == ("api.example.com", 80)
    thief = translate(mesh, BOOKTHIEF)
    assert not [h for h in thief[resources.ROUTE]["outbound"].virtual_hosts if h.name.startswith("egress")]  # type: ignore[attr-defined]
    assert not [name for name in thief[resources.CLUSTER] if name.startswith("egress")]


def test_http_egress_with_matches_routes_only_those_requests_and_rules_add_up() -> None:
    books = HttpMatch("api", "books", "/books", ("GET",), ())
    authors = HttpMatch("api", "authors", "/authors", (), ())
    narrowed = [
        EgressRule(BOOKBUYER.identity, "api.example.com", 8080, "http", (books,)),
        EgressRule(BOOKBUYER.identity, "api.example.com", 8080, "http", (authors,)),
    ]
    host = virtual_host(
        translate(replace(example(), egress=tuple(narrowed)), BOOKBUYER), "egress|api.example.com:8080"
    )
    assert [r.match.safe_regex.regex for r in host.routes] == ["(?:/books).*", "(?:/authors).*"]  # type: ignore[attr-defined]
    everything = replace(
        example(), egress=(*narrowed, EgressRule(BOOKBUYER.identity, "api.example.com", 8080, "http"))
    )
    host = virtual_host(translate(everything, BOOKBUYER), "egress|api.example.com:8080")
    assert [r.match.prefix for r in host.routes] == ["/"]  # type: ignore[attr-defined]


def test_tls_egress_is_a_filter_chain_by_server_name_after_the_http_chain() -> None:
    listener = translate(with_policies(), BOOKBUYER)[resources.LISTENER]["outbound"]
    http, tls = listener.filter_chains  # type: ignore[attr-defined]
    assert http.filters[0].name == "envoy.filters.network.http_connection_manager"
    assert list(tls.filter_chain_match.server_names) == ["api.example.com"]
    assert tls.filter_chain_match.transport_protocol == "tls"
    assert [f.name for f in listener.listener_filters] == ["envoy.filters.listener.tls_inspector"]  # type: ignore[attr-defined]
    plain = translate(with_policies(), BOOKTHIEF)[resources.LISTENER]["outbound"]
    assert len(plain.filter_chains) == 1 and not plain.listener_filters  # type: ignore[attr-defined]


def test_an_ingress_only_port_admits_its_ingress_identities_and_no_mesh_caller() -> None:
    res = translate(example(), WAREHOUSE_PROXY)  # bookstore may call the warehouse: a TrafficTarget says so
    network = network_rbac_pb2.RBAC()
    res[resources.LISTENER]["inbound"].filter_chains[0].filters[0].typed_config.Unpack(network)  # type: ignore[attr-defined]
    assert "bookstore" in str(network.rules.policies["callers"].principals)
    res = translate(with_policies(), WAREHOUSE_PROXY)
    res[resources.LISTENER]["inbound"].filter_chains[0].filters[0].typed_config.Unpack(network)  # type: ignore[attr-defined]
    principals = str(network.rules.policies["callers"].principals)
    assert "/ns/bookthief/sa/bookthief" in principals and "bookstore" not in principals
    rules = http_rbac_pb2.RBACPerRoute()
    (host,) = res[resources.ROUTE]["inbound"].virtual_hosts  # type: ignore[attr-defined]
    host.typed_per_filter_config["envoy.filters.http.rbac"].Unpack(rules)
    assert list(rules.rbac.rules.policies) == ["bookthief/bookthief"]
    # The ingress identity is sent the backend's namespace, which no TrafficTarget gives it.
    assert HOST in translate(replace(with_policies(), permissive=False), BOOKTHIEF)[resources.CLUSTER]


def plaintext_ingress(*ranges: str) -> MeshState:
    rule = IngressRule(WAREHOUSE, WAREHOUSE_PROXY.app_port, (), False, ranges)
    return replace(example(), ingress=(rule,))


def test_a_plaintext_ingress_port_takes_plaintext_from_the_ingress_addresses_only() -> None:
    listener = translate(plaintext_ingress("10.0.0.0/8", "10.9.0.7/32"), WAREHOUSE_PROXY)[resources.LISTENER][
        "inbound"
    ]
    (chain,) = listener.filter_chains  # type: ignore[attr-defined]
    assert chain.filter_chain_match.transport_protocol == "raw_buffer"
    assert [
        (r.address_prefix, r.prefix_len.value) for r in chain.filter_chain_match.source_prefix_ranges
    ] == [
        ("10.0.0.0", 8),
        ("10.9.0.7", 32),
    ]
    assert not chain.HasField("transport_socket")  # plaintext; TLS (mesh callers) matches no chain
    assert [f.name for f in chain.filters] == ["envoy.filters.network.http_connection_manager"]  # no RBAC
    assert [f.name for f in listener.listener_filters] == ["envoy.filters.listener.tls_inspector"]  # type: ignore[attr-defined]


def test_a_plaintext_ingress_with_no_address_yet_refuses_everyone() -> None:
    listener = translate(plaintext_ingress(), WAREHOUSE_PROXY)[resources.LISTENER]["inbound"]
    (chain,) = listener.filter_chains  # type: ignore[attr-defined]
    assert [f.name for f in chain.filters] == ["envoy.filters.network.direct_response"]


def test_rate_limits_are_filters_of_the_limited_services_inbound_listener() -> None:
    listener = translate(with_policies(), BOOKSTORE)[resources.LISTENER]["inbound"]
    (chain,) = listener.filter_chains  # type: ignore[attr-defined]
    assert [f.name for f in chain.filters] == [
        "envoy.filters.network.local_ratelimit",  # permissive: no callers' check before it
        "envoy.filters.network.http_connection_manager",
    ]
    connections = network_rate_pb2.LocalRateLimit()
    chain.filters[0].typed_config.Unpack(connections)
    assert connections.token_bucket.max_tokens == 100
    hcm = hcm_pb2.HttpConnectionManager()
    chain.filters[1].typed_config.Unpack(hcm)
    assert [f.name for f in hcm.http_filters] == [
        "envoy.filters.http.rbac",
        "envoy.filters.http.local_ratelimit",
        "envoy.filters.http.router",
    ]
    requests = http_rate_pb2.LocalRateLimit()
    hcm.http_filters[1].typed_config.Unpack(requests)
    bucket = requests.token_bucket
    assert (bucket.max_tokens, bucket.tokens_per_fill.value, bucket.fill_interval.seconds) == (3, 3, 60)
    assert requests.status.code == 503
    assert requests.response_headers_to_add[0].header.key == "x-limited"
    # A TCP sidecar: the connection limit before its proxying; bucket = rate + burst.
    (tcp_chain,) = translate(with_policies(), MYSQL_V1)[resources.LISTENER]["inbound"].filter_chains  # type: ignore[attr-defined]
    assert [f.name for f in tcp_chain.filters] == [
        "envoy.filters.network.local_ratelimit",
        "envoy.filters.network.tcp_proxy",
    ]
    tcp_chain.filters[0].typed_config.Unpack(connections)
    assert connections.token_bucket.max_tokens == 15
    # Callers' sidecars are not limited: limits hold where the service receives.
    (plain,) = translate(with_policies(), BOOKBUYER)[resources.LISTENER]["inbound"].filter_chains  # type: ignore[attr-defined]
    assert "envoy.filters.network.local_ratelimit" not in [f.name for f in plain.filters]


def test_a_paths_own_rate_is_a_route_of_its_own_with_its_bucket() -> None:
    v2 = Proxy(BOOKSTORE.identity, ServiceRef("bookstore", "bookstore-v2"), 8080, 15001, 15006)
    res = translate(with_policies(), v2)
    (host,) = res[resources.ROUTE]["inbound"].virtual_hosts  # type: ignore[attr-defined]
    limited, rest = host.routes
    assert limited.match.safe_regex.regex == "(?:/buy).*"  # anchored at the start, as a pathRegex
    assert rest.match.prefix == "/" and not rest.typed_per_filter_config
    bucket = http_rate_pb2.LocalRateLimit()
    limited.typed_per_filter_config["envoy.filters.http.local_ratelimit"].Unpack(bucket)
    assert (bucket.token_bucket.max_tokens, bucket.token_bucket.fill_interval.seconds) == (1, 60)
    hcm = hcm_pb2.HttpConnectionManager()
    res[resources.LISTENER]["inbound"].filter_chains[0].filters[-1].typed_config.Unpack(hcm)  # type: ignore[attr-defined]
    listener_level = http_rate_pb2.LocalRateLimit()
    hcm.http_filters[1].typed_config.Unpack(listener_level)
    assert not listener_level.HasField("token_bucket")  # only the route's bucket limits


def test_the_rate_limit_statuses_are_envoys() -> None:
    envoy = {code for code in http_status_pb2.StatusCode.values() if 400 <= code <= 599}
    assert envoy == RATE_LIMIT_STATUSES


@pytest.mark.integration
@pytest.mark.parametrize(
    ("mesh", "proxy"),
    [
        (with_policies, BOOKBUYER),
        (with_policies, BOOKTHIEF),
        (with_policies, WAREHOUSE_PROXY),
        (with_policies, BOOKSTORE),
        (with_policies, MYSQL_V1),
        (lambda: plaintext_ingress("10.0.0.0/8"), WAREHOUSE_PROXY),
        (
            with_policies,
            Proxy(BOOKSTORE.identity, ServiceRef("bookstore", "bookstore-v2"), 8080, 15001, 15006),
        ),
    ],
    ids=[
        "retry and egress",
        "fault",
        "ingress",
        "http rate limits",
        "tcp rate limit",
        "plaintext ingress",
        "route rate limit",
    ],
)
def test_real_envoy_accepts_the_policies(mesh: Callable[[], MeshState], proxy: Proxy, tmp_path: Path) -> None:
    config = tmp_path / "bootstrap.json"
    config.write_text(json.dumps(as_static_bootstrap(translate(mesh(), proxy), proxy)))
    result = subprocess.run(
        [ENVOY, "--mode", "validate", "-c", str(config), "--use-dynamic-base-id", "-l", "error"],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode == 0, result.stdout[-2000:] + result.stderr[-2000:]

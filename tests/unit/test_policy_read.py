"""The policy readers: each OSM policy and FaultInjection into the mesh model, through ``read.mesh``."""

from __future__ import annotations

from typing import Any

from gitmesh.apis import read
from gitmesh.mesh.state import (
    ConnectionLimits,
    EgressRule,
    Fault,
    Identity,
    IngressRule,
    RateLimit,
    RetryPolicy,
    ServiceRef,
)

BOOKSTORE = ServiceRef("shop", "bookstore")
BUYER = Identity("shop", "bookbuyer")


def service(name: str) -> dict[str, Any]:
    return {
        "kind": "Service",
        "metadata": {"name": name, "namespace": "shop"},
        "spec": {"ports": [{"port": 80, "name": "http"}]},
    }


def policy(kind: str, name: str, spec: dict[str, Any]) -> dict[str, Any]:
    return {"kind": kind, "metadata": {"name": name, "namespace": "shop"}, "spec": spec}


def retry(name: str, retries: int, destination: str = "bookstore") -> dict[str, Any]:
    return policy(
        "Retry",
        name,
        {
            "source": {"kind": "ServiceAccount", "name": "bookbuyer", "namespace": "shop"},
            "destinations": [{"kind": "Service", "name": destination, "namespace": "shop"}],
            "retryPolicy": {
                "retryOn": "5xx,reset",
                "perTryTimeout": "250ms",
                "numRetries": retries,
                "retryBackoffBaseInterval": "10ms",
            },
        },
    )


def test_retry_reads_attempts_and_durations_in_milliseconds() -> None:
    mesh = read.mesh([service("bookstore"), retry("r", 5)])
    assert mesh.retries == (RetryPolicy(BUYER, BOOKSTORE, "5xx,reset", 5, 250, 10),)
    assert mesh.warnings == ()


def test_retry_to_a_missing_service_is_left_out_with_a_warning() -> None:
    mesh = read.mesh([service("bookstore"), retry("r", 5, destination="nowhere")])
    assert mesh.retries == ()
    assert mesh.warnings == ("Retry shop/r: Service shop/nowhere does not exist",)


def test_overlapping_retries_first_by_name_wins() -> None:
    mesh = read.mesh([service("bookstore"), retry("b", 2), retry("a", 7)])
    assert [r.retries for r in mesh.retries] == [7]
    assert "Retry shop/a wins" in mesh.warnings[0]


def test_upstream_traffic_setting_reads_connection_limits_by_host() -> None:
    spec = {
        "host": "bookstore.shop.svc.cluster.local",
        "connectionSettings": {
            "tcp": {"maxConnections": 3, "connectTimeout": "2s"},
            "http": {"maxPendingRequests": 1},
        },
    }
    mesh = read.mesh([service("bookstore"), policy("UpstreamTrafficSetting", "u", spec)])
    assert mesh.limits == (
        ConnectionLimits(BOOKSTORE, max_connections=3, connect_timeout_ms=2000, max_pending_requests=1),
    )


def test_local_rate_limits_are_token_buckets_per_unit() -> None:
    local = {
        "tcp": {"connections": 100, "unit": "minute", "burst": 10},
        "http": {
            "requests": 10,
            "unit": "second",
            "responseStatusCode": 503,
            "responseHeadersToAdd": [{"name": "x-limited", "value": "yes"}],
        },
    }
    spec = {"host": "bookstore", "rateLimit": {"local": local}}
    mesh = read.mesh([service("bookstore"), policy("UpstreamTrafficSetting", "u", spec)])
    (limits,) = mesh.limits
    assert limits.connection_rate == RateLimit(100, 60, 10)
    assert limits.request_rate == RateLimit(10, 1, 0, 503, (("x-limited", "yes"),))
    assert str(limits) == "shop/bookstore limits connections at 100/minute (burst 10), requests at 10/second"


def test_a_paths_own_rate_limit_is_read_with_its_path() -> None:
    spec = {
        "host": "bookstore",
        "httpRoutes": [
            {"path": "/buy", "rateLimit": {"local": {"requests": 1, "unit": "minute"}}},
            {"path": "/free"},  # no limit: nothing to carry
        ],
    }
    mesh = read.mesh([service("bookstore"), policy("UpstreamTrafficSetting", "u", spec)])
    (limits,) = mesh.limits
    assert limits.route_rates == (("/buy", RateLimit(1, 60)),)
    assert str(limits) == "shop/bookstore limits requests to ^/buy at 1/minute"


def test_rate_limits_envoy_cannot_carry_are_refused_not_dropped() -> None:
    teapot = {
        "host": "bookstore",
        "rateLimit": {"local": {"http": {"requests": 1, "unit": "hour", "responseStatusCode": 418}}},
    }
    tcp_only = {
        "apiVersion": "v1",
        "kind": "Service",
        "metadata": {"name": "mysql", "namespace": "shop"},
        "spec": {"ports": [{"port": 3306, "name": "mysql"}]},
    }
    on_tcp = {"host": "mysql", "rateLimit": {"local": {"http": {"requests": 1, "unit": "hour"}}}}
    mesh = read.mesh(
        [
            service("bookstore"),
            tcp_only,
            policy("UpstreamTrafficSetting", "b", teapot),
            policy("UpstreamTrafficSetting", "c", on_tcp),
        ]
    )
    assert mesh.limits == ()
    assert "cannot answer 418" in mesh.warnings[0]
    assert "shop/mysql has no HTTP port" in mesh.warnings[1]


def test_egress_is_one_rule_per_source_port_and_host() -> None:
    spec = {
        "sources": [{"kind": "ServiceAccount", "name": "bookbuyer", "namespace": "shop"}],
        "hosts": ["api.example.com"],
        "ports": [{"number": 443, "protocol": "tls"}, {"number": 80, "protocol": "http"}],
    }
    mesh = read.mesh([policy("Egress", "e", spec)])
    assert mesh.egress == (
        EgressRule(BUYER, "api.example.com", 443, "tls"),
        EgressRule(BUYER, "api.example.com", 80, "http"),
    )
    assert str(mesh.egress[0]) == "shop/bookbuyer may reach api.example.com:443 (tls)"


def test_ip_ranges_on_a_tls_port_are_refused_whole() -> None:
    spec = {
        "sources": [{"kind": "ServiceAccount", "name": "bookbuyer", "namespace": "shop"}],
        "hosts": ["api.example.com"],
        "ipAddresses": ["10.0.0.0/8"],
        "ports": [{"number": 443, "protocol": "tls"}],
    }
    mesh = read.mesh([policy("Egress", "e", spec)])
    assert mesh.egress == ()
    assert "ipAddresses narrow tcp ports only" in mesh.warnings[0]


def test_tcp_egress_reaches_addresses_in_its_ranges_or_any() -> None:
    source = [{"kind": "ServiceAccount", "name": "bookbuyer", "namespace": "shop"}]
    ranged = {
        "sources": source,
        "ipAddresses": ["10.1.2.3/16", "192.0.2.7"],
        "ports": [{"number": 5432, "protocol": "TCP"}],
    }
    anywhere = {"sources": source, "ports": [{"number": 22, "protocol": "tcp"}]}
    mesh = read.mesh([policy("Egress", "a", ranged), policy("Egress", "b", anywhere)])
    assert mesh.egress == (
        EgressRule(BUYER, "", 5432, "tcp", ranges=("10.1.0.0/16", "192.0.2.7/32")),
        EgressRule(BUYER, "", 22, "tcp"),
    )
    assert [str(r) for r in mesh.egress] == [
        "shop/bookbuyer may reach 10.1.0.0/16,192.0.2.7/32:5432 (tcp)",
        "shop/bookbuyer may reach any address:22 (tcp)",
    ]


def test_a_leading_wildcard_host_is_read_and_other_wildcards_are_refused() -> None:
    source = [{"kind": "ServiceAccount", "name": "bookbuyer", "namespace": "shop"}]
    ports = [{"number": 443, "protocol": "tls"}]
    good = {"sources": source, "hosts": ["*.example.com"], "ports": ports}
    mesh = read.mesh([policy("Egress", "a", good)])
    (rule,) = mesh.egress
    assert rule.wildcard and rule.host == "*.example.com"
    for host in ("api.*.com", "*", "*example.com", "*.*.example.com"):
        bad = read.mesh([policy("Egress", "b", {**good, "hosts": [host]})])
        assert bad.egress == () and "only a leading '*.'" in bad.warnings[0], host


def test_egress_the_sidecar_cannot_tell_apart_is_refused() -> None:
    source = [{"kind": "ServiceAccount", "name": "bookbuyer", "namespace": "shop"}]
    hosts_on_tcp = {
        "sources": source,
        "hosts": ["db.example.com"],
        "ports": [{"number": 5432, "protocol": "tcp"}],
    }
    two_tls = {
        "sources": source,
        "hosts": ["api.example.com"],
        "ports": [{"number": 443, "protocol": "tls"}, {"number": 8443, "protocol": "tls"}],
    }
    no_hosts = {
        "sources": source,
        "ipAddresses": ["10.0.0.0/8"],
        "ports": [{"number": 80, "protocol": "http"}],
    }
    mesh = read.mesh(
        [policy("Egress", "a", hosts_on_tcp), policy("Egress", "b", two_tls), policy("Egress", "c", no_hosts)]
    )
    assert mesh.egress == ()
    assert "a tcp port is reached by address" in mesh.warnings[0]
    assert "one tls port per host" in mesh.warnings[1]
    assert "http egress is told apart by name: it needs hosts" in mesh.warnings[2]


def test_http_egress_is_narrowed_to_the_matches_of_the_route_groups_it_names() -> None:
    group = {
        "apiVersion": "specs.smi-spec.io/v1alpha4",
        "kind": "HTTPRouteGroup",
        "metadata": {"name": "api", "namespace": "shop"},
        "spec": {"matches": [{"name": "books", "pathRegex": "/books", "methods": ["GET"]}]},
    }
    spec = {
        "sources": [{"kind": "ServiceAccount", "name": "bookbuyer", "namespace": "shop"}],
        "hosts": ["api.example.com"],
        "ports": [{"number": 80, "protocol": "http"}, {"number": 443, "protocol": "tls"}],
        "matches": [{"apiGroup": "specs.smi-spec.io/v1alpha4", "kind": "HTTPRouteGroup", "name": "api"}],
    }
    mesh = read.mesh([group, policy("Egress", "e", spec)])
    http, tls = mesh.egress
    assert [str(m) for m in http.http_matches] == ["api/books (GET ^/books)"]
    assert tls.http_matches == ()  # matches narrow HTTP only
    assert str(http) == "shop/bookbuyer may reach api.example.com:80 (http) on api/books (GET ^/books)"


def test_egress_matches_that_name_no_route_group_are_refused() -> None:
    spec = {
        "sources": [{"kind": "ServiceAccount", "name": "bookbuyer", "namespace": "shop"}],
        "hosts": ["api.example.com"],
        "ports": [{"number": 80, "protocol": "http"}],
        "matches": [
            {"apiGroup": "specs.smi-spec.io/v1alpha4", "kind": "HTTPRouteGroup", "name": "nowhere"},
            {"apiGroup": "policy.openservicemesh.io/v1alpha1", "kind": "UpstreamTrafficSetting", "name": "u"},
        ],
    }
    mesh = read.mesh([policy("Egress", "e", spec)])
    assert mesh.egress == ()
    assert "HTTPRouteGroup shop/nowhere does not exist" in mesh.warnings[0]
    assert "egress matches by UpstreamTrafficSetting are not carried" in mesh.warnings[1]


def test_egress_to_a_mesh_service_is_refused() -> None:
    for host in ("bookstore", "bookstore.shop", "bookstore.shop.svc.cluster.local"):
        spec = {
            "sources": [{"kind": "ServiceAccount", "name": "bookbuyer", "namespace": "shop"}],
            "hosts": [host],
            "ports": [{"number": 80, "protocol": "http"}],
        }
        mesh = read.mesh([service("bookstore"), policy("Egress", "e", spec)])
        assert mesh.egress == ()
        assert "is Service shop/bookstore of the mesh" in mesh.warnings[0]


def test_tls_egress_to_one_host_on_two_ports_overlaps_across_objects() -> None:
    def egress(name: str, port: int) -> dict[str, Any]:
        spec = {
            "sources": [{"kind": "ServiceAccount", "name": "bookbuyer", "namespace": "shop"}],
            "hosts": ["api.example.com"],
            "ports": [{"number": port, "protocol": "tls"}],
        }
        return policy("Egress", name, spec)

    mesh = read.mesh([egress("b", 8443), egress("a", 443)])
    assert mesh.egress == (EgressRule(BUYER, "api.example.com", 443, "tls"),)
    assert "Egress shop/a wins" in mesh.warnings[0]


def test_ingress_backend_over_plaintext_cannot_prove_a_service_account() -> None:
    spec = {
        "backends": [{"name": "bookstore", "port": {"number": 80, "protocol": "http"}}],
        "sources": [{"kind": "ServiceAccount", "name": "ingress", "namespace": "edge"}],
    }
    mesh = read.mesh([service("bookstore"), policy("IngressBackend", "i", spec)])
    assert mesh.ingress == ()
    assert "proven only over mTLS" in mesh.warnings[0]


def test_ingress_backend_names_ingress_identities_and_mtls() -> None:
    spec = {
        "backends": [{"name": "bookstore", "port": {"number": 80, "protocol": "https"}}],
        "sources": [{"kind": "ServiceAccount", "name": "ingress", "namespace": "edge"}],
    }
    mesh = read.mesh([service("bookstore"), policy("IngressBackend", "i", spec)])
    assert mesh.ingress == (IngressRule(BOOKSTORE, 80, (Identity("edge", "ingress"),), True),)


def test_plaintext_ingress_is_known_by_address_an_ip_range_or_its_services_endpoints() -> None:
    spec = {
        "backends": [{"name": "bookstore", "port": {"number": 80, "protocol": "http"}}],
        "sources": [
            {"kind": "IPRange", "name": "10.1.2.3/8"},
            {"kind": "Service", "name": "ingress", "namespace": "shop"},
        ],
    }
    endpoints = {
        "apiVersion": "discovery.k8s.io/v1",
        "kind": "EndpointSlice",
        "metadata": {
            "name": "ingress-1",
            "namespace": "shop",
            "labels": {"kubernetes.io/service-name": "ingress"},
        },
        "addressType": "IPv4",
        "ports": [{"name": "http", "port": 8080}],
        "endpoints": [{"addresses": ["10.9.0.7"]}, {"addresses": ["10.9.0.8"]}],
    }
    objects = [service("bookstore"), service("ingress"), endpoints, policy("IngressBackend", "i", spec)]
    mesh = read.mesh(objects)
    assert mesh.ingress == (
        IngressRule(BOOKSTORE, 80, (), False, ("10.0.0.0/8", "10.9.0.7/32", "10.9.0.8/32")),
    )
    assert str(mesh.ingress[0]).startswith("shop/bookstore:80 is ingress only, in plaintext from 10.0.0.0/8")


def test_ingress_sources_that_do_not_fit_the_protocol_are_refused() -> None:
    def ingress(name: str, protocol: str, source: dict[str, str], **backend: Any) -> dict[str, Any]:
        port = {"number": 80, "protocol": protocol}
        return policy(
            "IngressBackend",
            name,
            {"backends": [{"name": "bookstore", "port": port, **backend}], "sources": [source]},
        )

    mesh = read.mesh(
        [
            service("bookstore"),
            ingress("a", "https", {"kind": "IPRange", "name": "10.0.0.0/8"}),
            ingress("b", "http", {"kind": "IPRange", "name": "10.0.0.300/8"}),
            ingress(
                "c",
                "https",
                {"kind": "ServiceAccount", "name": "ingress"},
                tls={"skipClientCertValidation": True},
            ),
        ]
    )
    assert mesh.ingress == ()
    assert "known by its ServiceAccount, not its address" in mesh.warnings[0]
    assert "10.0.0.300/8" in mesh.warnings[1]
    assert "tls.skipClientCertValidation is not carried" in mesh.warnings[2]


def test_fault_injection_reads_delay_and_abort_per_source() -> None:
    spec = {
        "destination": {"name": "bookstore", "namespace": "shop"},
        "source": {"name": "bookbuyer", "namespace": "shop"},
        "delay": {"percent": 50, "duration": "100ms"},
        "abort": {"percent": 10, "status": 503},
    }
    mesh = read.mesh([service("bookstore"), policy("FaultInjection", "f", spec)])
    assert mesh.faults == (Fault(BOOKSTORE, BUYER, 50.0, 100, 10.0, 503),)
    assert (
        str(mesh.faults[0])
        == "shop/bookstore from shop/bookbuyer: delays 50% by 100 ms and aborts 10% with 503"
    )

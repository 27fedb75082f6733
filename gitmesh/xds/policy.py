"""The policy values of the mesh model as Envoy configuration: retries and faults on a caller's
outbound virtual host, connection limits as the destination cluster's circuit breakers, egress as
a DNS cluster per external host and port that the caller's outbound listener reaches by HTTP Host
(a virtual host) or by TLS server name (a filter chain), local rate limits as filters of the
destination sidecar's inbound listener.

A wildcard host (``*.example.com``) names no one address to resolve ahead: its cluster is Envoy's
dynamic forward proxy, which resolves each name as it is asked for (the HTTP Host, by the
``dynamic_forward_proxy`` HTTP filter; the TLS server name, by the ``sni_dynamic_forward_proxy``
network filter), all through one DNS cache, ``egress``, on the system's resolver."""

from __future__ import annotations

import ipaddress
from collections.abc import Sequence

from envoy.config.cluster.v3 import circuit_breaker_pb2, cluster_pb2
from envoy.config.core.v3 import address_pb2, base_pb2
from envoy.config.endpoint.v3 import endpoint_components_pb2, endpoint_pb2
from envoy.config.listener.v3 import listener_components_pb2
from envoy.config.route.v3 import route_components_pb2
from envoy.extensions.clusters.dynamic_forward_proxy.v3 import cluster_pb2 as dfp_cluster_pb2
from envoy.extensions.common.dynamic_forward_proxy.v3 import dns_cache_pb2
from envoy.extensions.filters.common.fault.v3 import fault_pb2 as common_fault_pb2
from envoy.extensions.filters.http.dynamic_forward_proxy.v3 import dynamic_forward_proxy_pb2 as dfp_http_pb2
from envoy.extensions.filters.http.fault.v3 import fault_pb2
from envoy.extensions.filters.http.local_ratelimit.v3 import local_rate_limit_pb2 as http_rate_pb2
from envoy.extensions.filters.listener.tls_inspector.v3 import tls_inspector_pb2
from envoy.extensions.filters.network.local_ratelimit.v3 import local_rate_limit_pb2 as network_rate_pb2
from envoy.extensions.filters.network.sni_dynamic_forward_proxy.v3 import (
    sni_dynamic_forward_proxy_pb2 as dfp_sni_pb2,
)
from envoy.extensions.filters.network.tcp_proxy.v3 import tcp_proxy_pb2
from envoy.type.v3 import http_status_pb2, percent_pb2, token_bucket_pb2
from google.protobuf import any_pb2, duration_pb2, message, wrappers_pb2

from gitmesh.mesh.state import ConnectionLimits, EgressRule, Fault, RateLimit, RetryPolicy

# The resource names a passthrough default and TCP egress use; translate's ``PASSTHROUGH`` is this.
PASSTHROUGH = "passthrough"

FAULT_FILTER = "envoy.filters.http.fault"
TLS_INSPECTOR = "envoy.filters.listener.tls_inspector"
CONNECTION_RATE_FILTER = "envoy.filters.network.local_ratelimit"
REQUEST_RATE_FILTER = "envoy.filters.http.local_ratelimit"
FORWARD_PROXY_FILTER = "envoy.filters.http.dynamic_forward_proxy"
DNS_CACHE = "egress"
OPEN_EGRESS = "egress|*"  # the cluster and virtual host of requests for any host (enableEgress)
RATE_STAT_PREFIX = "inbound_rate"  # counters: <filter's prefix>.inbound_rate.rate_limited


def retry_policy(retry: RetryPolicy) -> route_components_pb2.RetryPolicy:
    return route_components_pb2.RetryPolicy(
        retry_on=retry.retry_on,
        num_retries=wrappers_pb2.UInt32Value(value=retry.retries),
        per_try_timeout=_millis(retry.per_try_timeout_ms),
        retry_back_off=route_components_pb2.RetryPolicy.RetryBackOff(
            base_interval=_millis(retry.backoff_base_ms)
        ),
    )


def circuit_breakers(limits: ConnectionLimits) -> circuit_breaker_pb2.CircuitBreakers:
    """Envoy's defaults (1024 connections, requests, pending; 3 retries) where a limit is not set."""
    thresholds = circuit_breaker_pb2.CircuitBreakers.Thresholds()
    for field, value in (
        ("max_connections", limits.max_connections),
        ("max_requests", limits.max_requests),
        ("max_pending_requests", limits.max_pending_requests),
        ("max_retries", limits.max_retries),
    ):
        if value is not None:
            getattr(thresholds, field).value = value
    return circuit_breaker_pb2.CircuitBreakers(thresholds=[thresholds])


def http_fault(fault: Fault) -> fault_pb2.HTTPFault:
    config = fault_pb2.HTTPFault()
    if fault.delay_percent:
        config.delay.CopyFrom(
            common_fault_pb2.FaultDelay(
                fixed_delay=_millis(fault.delay_ms), percentage=_per_million(fault.delay_percent)
            )
        )
    if fault.abort_percent:
        config.abort.CopyFrom(
            fault_pb2.FaultAbort(http_status=fault.abort_status, percentage=_per_million(fault.abort_percent))
        )
    return config


def _per_million(percent: float) -> percent_pb2.FractionalPercent:
    # Millionths, so that fractional percents such as 0.5 are carried exactly enough.
    return percent_pb2.FractionalPercent(
        numerator=round(percent * 10_000), denominator=percent_pb2.FractionalPercent.MILLION
    )


def _millis(ms: int) -> duration_pb2.Duration:
    return duration_pb2.Duration(seconds=ms // 1000, nanos=(ms % 1000) * 1_000_000)


def egress_cluster_name(rule: EgressRule) -> str:
    return f"egress|{rule.host}:{rule.port}"


def egress_cluster(rule: EgressRule) -> cluster_pb2.Cluster:
    """The external host by DNS, as the system resolver has it (a wildcard's names each as it is
    asked for); plaintext: HTTP egress is plain HTTP and TLS egress is the caller's own TLS,
    passed through."""
    name = egress_cluster_name(rule)
    if rule.wildcard:
        return forward_proxy_cluster(name)
    address = address_pb2.Address(
        socket_address=address_pb2.SocketAddress(address=rule.host, port_value=rule.port)
    )
    return cluster_pb2.Cluster(
        name=name,
        type=cluster_pb2.Cluster.LOGICAL_DNS,
        dns_lookup_family=cluster_pb2.Cluster.V4_PREFERRED,
        connect_timeout=duration_pb2.Duration(seconds=1),
        load_assignment=endpoint_pb2.ClusterLoadAssignment(
            cluster_name=name,
            endpoints=[
                endpoint_components_pb2.LocalityLbEndpoints(
                    lb_endpoints=[
                        endpoint_components_pb2.LbEndpoint(
                            endpoint=endpoint_components_pb2.Endpoint(address=address)
                        )
                    ]
                )
            ],
        ),
    )


def forward_proxy_cluster(name: str) -> cluster_pb2.Cluster:
    """Envoy's dynamic forward proxy: each host as the request or server name gives it."""
    return cluster_pb2.Cluster(
        name=name,
        lb_policy=cluster_pb2.Cluster.CLUSTER_PROVIDED,
        connect_timeout=duration_pb2.Duration(seconds=1),
        cluster_type=cluster_pb2.Cluster.CustomClusterType(
            name="envoy.clusters.dynamic_forward_proxy",
            typed_config=_any(dfp_cluster_pb2.ClusterConfig(dns_cache_config=dns_cache())),
        ),
    )


def open_egress_virtual_host() -> route_components_pb2.VirtualHost:
    """MeshConfig enableEgress on the outbound routes: a request no other virtual host takes goes
    to the host its Host header names."""
    to_host = route_components_pb2.RouteAction(cluster=OPEN_EGRESS)
    return route_components_pb2.VirtualHost(
        name=OPEN_EGRESS,
        domains=["*"],
        routes=[route_components_pb2.Route(match=route_components_pb2.RouteMatch(prefix="/"), route=to_host)],
    )


def dns_cache() -> dns_cache_pb2.DnsCacheConfig:
    """The one cache wildcard egress resolves through: the filters and clusters naming it must
    give it the same settings."""
    return dns_cache_pb2.DnsCacheConfig(name=DNS_CACHE, dns_lookup_family=cluster_pb2.Cluster.V4_PREFERRED)


def forward_proxy_filter() -> dfp_http_pb2.FilterConfig:
    """Resolves the Host of requests routed to a wildcard's cluster; others pass untouched."""
    return dfp_http_pb2.FilterConfig(dns_cache_config=dns_cache())


def egress_virtual_host(
    rule: EgressRule, matches: Sequence[route_components_pb2.RouteMatch]
) -> route_components_pb2.VirtualHost:
    """HTTP egress: requests whose Host is the external host (with its port, or bare for port 80),
    those ``matches`` select (every request without)."""
    domains = [f"{rule.host}:{rule.port}"] + ([rule.host] if rule.port == 80 else [])
    to_host = route_components_pb2.RouteAction(cluster=egress_cluster_name(rule))
    return route_components_pb2.VirtualHost(
        name=egress_cluster_name(rule),
        domains=domains,
        routes=[
            route_components_pb2.Route(match=match, route=to_host)
            for match in matches or [route_components_pb2.RouteMatch(prefix="/")]
        ],
    )


def egress_tls_chain(rule: EgressRule, by_port: bool = False) -> listener_components_pb2.FilterChain:
    """TLS egress: connections whose ClientHello names the host (a wildcard: any name under its
    domain, resolved as it comes), passed through to it unread; ``by_port``: only those sent to its
    port (a pod's sidecar sees where they were sent)."""
    tcp = tcp_proxy_pb2.TcpProxy(stat_prefix=egress_cluster_name(rule), cluster=egress_cluster_name(rule))
    filters = [listener_components_pb2.Filter(name="envoy.filters.network.tcp_proxy", typed_config=_any(tcp))]
    if rule.wildcard:
        sni = dfp_sni_pb2.FilterConfig(dns_cache_config=dns_cache(), port_value=rule.port)
        filters.insert(
            0,
            listener_components_pb2.Filter(
                name="envoy.filters.network.sni_dynamic_forward_proxy", typed_config=_any(sni)
            ),
        )
    match = listener_components_pb2.FilterChainMatch(server_names=[rule.host], transport_protocol="tls")
    if by_port:
        match.destination_port.value = rule.port
    return listener_components_pb2.FilterChain(
        name=egress_cluster_name(rule), filter_chain_match=match, filters=filters
    )


def egress_tcp_chain(port: int, ranges: Sequence[str]) -> listener_components_pb2.FilterChain:
    """TCP egress of a pod: connections sent to ``port`` at an address in ``ranges`` (none: any),
    on to where they were sent."""
    match = listener_components_pb2.FilterChainMatch(destination_port=wrappers_pb2.UInt32Value(value=port))
    for cidr in ranges:
        network = ipaddress.ip_network(cidr)
        match.prefix_ranges.append(
            address_pb2.CidrRange(
                address_prefix=str(network.network_address),
                prefix_len=wrappers_pb2.UInt32Value(value=network.prefixlen),
            )
        )
    name = f"egress|tcp:{port}"
    tcp = tcp_proxy_pb2.TcpProxy(stat_prefix=name, cluster=PASSTHROUGH)
    return listener_components_pb2.FilterChain(
        name=name,
        filter_chain_match=match,
        filters=[
            listener_components_pb2.Filter(name="envoy.filters.network.tcp_proxy", typed_config=_any(tcp))
        ],
    )


def tls_inspector() -> listener_components_pb2.ListenerFilter:
    """Reads a TLS ClientHello's server name for the filter chain match; plaintext passes untouched."""
    config = any_pb2.Any()
    config.Pack(tls_inspector_pb2.TlsInspector())
    return listener_components_pb2.ListenerFilter(name=TLS_INSPECTOR, typed_config=config)


def connection_rate(rate: RateLimit) -> network_rate_pb2.LocalRateLimit:
    """New connections beyond the bucket are closed at once."""
    return network_rate_pb2.LocalRateLimit(stat_prefix=RATE_STAT_PREFIX, token_bucket=_bucket(rate))


def request_rate(rate: RateLimit) -> http_rate_pb2.LocalRateLimit:
    """Requests beyond the bucket are answered ``rate.status`` without reaching the app."""
    every = base_pb2.RuntimeFractionalPercent(
        default_value=percent_pb2.FractionalPercent(
            numerator=100, denominator=percent_pb2.FractionalPercent.HUNDRED
        )
    )
    return http_rate_pb2.LocalRateLimit(
        stat_prefix=RATE_STAT_PREFIX,
        status=http_status_pb2.HttpStatus(code=rate.status),
        token_bucket=_bucket(rate),
        filter_enabled=every,
        filter_enforced=every,
        response_headers_to_add=[
            base_pb2.HeaderValueOption(header=base_pb2.HeaderValue(key=name, value=value))
            for name, value in rate.headers
        ],
    )


def route_rates_only() -> http_rate_pb2.LocalRateLimit:
    """The filter for routes' own rates alone: no bucket of its own, so it limits only the routes
    whose per-filter config gives one."""
    return http_rate_pb2.LocalRateLimit(stat_prefix=RATE_STAT_PREFIX)


def _bucket(rate: RateLimit) -> token_bucket_pb2.TokenBucket:
    return token_bucket_pb2.TokenBucket(
        max_tokens=rate.count + rate.burst,
        tokens_per_fill=wrappers_pb2.UInt32Value(value=rate.count),
        fill_interval=duration_pb2.Duration(seconds=rate.seconds),
    )


def _any(msg: message.Message) -> any_pb2.Any:
    packed = any_pb2.Any()
    packed.Pack(msg)
    return packed

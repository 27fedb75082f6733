"""Small Envoy resources for the xDS tests: clusters, endpoints, listeners, routes."""

from __future__ import annotations

from collections.abc import Mapping

from envoy.config.cluster.v3 import cluster_pb2
from envoy.config.core.v3 import address_pb2, config_source_pb2
from envoy.config.endpoint.v3 import endpoint_components_pb2, endpoint_pb2
from envoy.config.listener.v3 import listener_components_pb2, listener_pb2
from envoy.config.route.v3 import route_components_pb2, route_pb2
from envoy.extensions.filters.http.router.v3 import router_pb2
from envoy.extensions.filters.network.http_connection_manager.v3 import (
    http_connection_manager_pb2 as hcm_pb2,
)
from google.protobuf import any_pb2, duration_pb2
from google.protobuf.message import Message

from gitmesh.xds import resources
from gitmesh.xds.snapshot import Encodings, Snapshot


def _ads() -> config_source_pb2.ConfigSource:
    return config_source_pb2.ConfigSource(
        ads=config_source_pb2.AggregatedConfigSource(), resource_api_version=config_source_pb2.V3
    )


def _socket(host: str, port: int) -> address_pb2.Address:
    return address_pb2.Address(socket_address=address_pb2.SocketAddress(address=host, port_value=port))


def assignment(name: str, port: int, host: str = "127.0.0.1") -> endpoint_pb2.ClusterLoadAssignment:
    return endpoint_pb2.ClusterLoadAssignment(
        cluster_name=name,
        endpoints=[
            endpoint_components_pb2.LocalityLbEndpoints(
                lb_endpoints=[
                    endpoint_components_pb2.LbEndpoint(
                        endpoint=endpoint_components_pb2.Endpoint(address=_socket(host, port))
                    )
                ]
            )
        ],
    )


def eds_cluster(name: str, timeout_ms: int = 1000) -> cluster_pb2.Cluster:
    cluster = cluster_pb2.Cluster(
        name=name,
        type=cluster_pb2.Cluster.EDS,
        eds_cluster_config=cluster_pb2.Cluster.EdsClusterConfig(eds_config=_ads()),
    )
    cluster.connect_timeout.FromMilliseconds(timeout_ms)
    return cluster


def static_cluster(name: str, port: int) -> cluster_pb2.Cluster:
    return cluster_pb2.Cluster(
        name=name,
        type=cluster_pb2.Cluster.STATIC,
        load_assignment=assignment(name, port),
        connect_timeout=duration_pb2.Duration(seconds=1),
    )


def _hcm(name: str, **config: Message) -> listener_components_pb2.Filter:
    manager = hcm_pb2.HttpConnectionManager(
        stat_prefix=name,
        http_filters=[
            hcm_pb2.HttpFilter(name="envoy.filters.http.router", typed_config=_pack(router_pb2.Router()))
        ],
        **config,  # type: ignore[arg-type]
    )
    return listener_components_pb2.Filter(
        name="envoy.filters.network.http_connection_manager", typed_config=_pack(manager)
    )


def _pack(message: Message) -> any_pb2.Any:
    packed = any_pb2.Any()
    packed.Pack(message)
    return packed


def listener(name: str, port: int, route: str) -> listener_pb2.Listener:
    """An HTTP listener on 127.0.0.1:``port`` that loads route configuration ``route`` over ADS."""
    rds = hcm_pb2.Rds(config_source=_ads(), route_config_name=route)
    return listener_pb2.Listener(
        name=name,
        address=_socket("127.0.0.1", port),
        filter_chains=[listener_components_pb2.FilterChain(filters=[_hcm(name, rds=rds)])],
    )


def route(
    name: str,
    cluster: str | None = None,
    body: str | None = None,
    regex: str | None = None,
) -> route_pb2.RouteConfiguration:
    """Everything to ``cluster``, or a direct ``body`` answer; ``regex`` replaces the prefix match."""
    match = (
        route_components_pb2.RouteMatch(safe_regex={"regex": regex})
        if regex is not None
        else route_components_pb2.RouteMatch(prefix="/")
    )
    if body is not None:
        entry = route_components_pb2.Route(
            match=match,
            direct_response=route_components_pb2.DirectResponseAction(
                status=200, body={"inline_string": body}
            ),
        )
    else:
        entry = route_components_pb2.Route(
            match=match, route=route_components_pb2.RouteAction(cluster=cluster)
        )
    return route_pb2.RouteConfiguration(
        name=name,
        virtual_hosts=[route_components_pb2.VirtualHost(name="all", domains=["*"], routes=[entry])],
    )


def snapshot(version: str, *items: Message, encodings: Encodings | None = None) -> Snapshot:
    """A snapshot of ``items``, each filed under its type URL and own name."""
    by_type: dict[str, dict[str, Message]] = {}
    for item in items:
        url = resources.type_url(item.DESCRIPTOR.full_name)
        name = item.cluster_name if url == resources.ENDPOINT else item.name  # type: ignore[attr-defined]
        by_type.setdefault(url, {})[name] = item
    return Snapshot(version, by_type, encodings)


def mesh(
    version: str,
    upstream_port: int = 9000,
    listen_port: int = 10000,
    encodings: Encodings | None = None,
    **changes: Message,
) -> Snapshot:
    """A typical proxy: EDS cluster ``web`` + its endpoints, listener ``http`` with route ``http``."""
    parts: Mapping[str, Message] = {
        "cluster": eds_cluster("web"),
        "endpoints": assignment("web", upstream_port),
        "listener": listener("http", listen_port, "http"),
        "route": route("http", cluster="web"),
        **changes,
    }
    return snapshot(version, *parts.values(), encodings=encodings)

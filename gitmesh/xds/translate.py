"""MeshState + one proxy -> that proxy's Envoy resources. Pure and deterministic.

Sidecars here are local processes, not pods: there is no iptables capture. An
app reaches the mesh through its sidecar's **outbound** listener
(``http://127.0.0.1:<outbound_port>`` with the service as Host), and the mesh
reaches the app through the sidecar's **inbound** listener, which is what a
service's endpoints point at.

Sidecars talk mTLS (``gitmesh.xds.tls``): a caller's identity is the SPIFFE ID
in its certificate, and the destination's RBAC filters admit callers by it.

Resource names, the one scheme used everywhere (users read them in
``/config_dump``):

============================  =====================================================
cluster, load assignment      ``<namespace>/<service>|<port>``; the local app: ``local|<app_port>``
                              (a static cluster of the sidecar's bootstrap)
listener                      ``outbound``, ``inbound``
route configuration           ``outbound``, ``inbound``
secret (SDS)                  ``workload-cert``: the sidecar's own identity's certificate and key;
                              ``trust-bundle``: the mesh's root certificates
============================  =====================================================
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from envoy.config.cluster.v3 import cluster_pb2
from envoy.config.core.v3 import address_pb2, base_pb2, config_source_pb2
from envoy.config.endpoint.v3 import endpoint_components_pb2, endpoint_pb2
from envoy.config.listener.v3 import api_listener_pb2, listener_components_pb2, listener_pb2
from envoy.config.rbac.v3 import rbac_pb2
from envoy.config.route.v3 import route_components_pb2, route_pb2
from envoy.extensions.filters.http.rbac.v3 import rbac_pb2 as http_rbac_pb2
from envoy.extensions.filters.http.router.v3 import router_pb2
from envoy.extensions.filters.network.http_connection_manager.v3 import http_connection_manager_pb2 as hcm_pb2
from envoy.extensions.filters.network.rbac.v3 import rbac_pb2 as network_rbac_pb2
from envoy.type.matcher.v3 import path_pb2, regex_pb2, string_pb2
from google.protobuf import any_pb2, duration_pb2, message, wrappers_pb2

from gitmesh.certs.ca import DEFAULT_TRUST_DOMAIN
from gitmesh.mesh.state import HttpMatch, MeshState, Port, Service, ServiceRef, Split
from gitmesh.smi import Identity
from gitmesh.xds import resources, tls

OUTBOUND = "outbound"
INBOUND = "inbound"
CLUSTER_DOMAIN = "cluster.local"


@dataclass(frozen=True)
class Proxy:
    """One sidecar, as its bootstrap describes it (node metadata)."""

    identity: Identity
    service: ServiceRef
    app_port: int
    outbound_port: int
    inbound_port: int
    grpc: bool = False  # a proxyless gRPC client (xds:/// targets), not an Envoy sidecar


Resources = dict[str, dict[str, message.Message]]  # type URL -> name -> resource


def cluster_name(service: ServiceRef, port: int) -> str:
    return f"{service.namespace}/{service.name}|{port}"


def local_cluster_name(app_port: int) -> str:
    return f"local|{app_port}"


def translate(mesh: MeshState, proxy: Proxy, trust_domain: str = DEFAULT_TRUST_DOMAIN) -> Resources:
    """Every resource ``proxy`` needs, keyed by type URL and name, but its secrets (``tls.secrets``)."""
    return Translator(mesh, trust_domain).resources(proxy)


class Translator:
    """Translates one MeshState for many proxies.

    What proxies share is built once and the same message objects go into every
    snapshot (so they are serialized once too): the clusters and load assignments (the
    same for all: each sidecar presents its own certificate under the one secret name;
    proxyless gRPC clients get plaintext clusters) and a namespace's outbound routes (short
    names resolve in the caller's namespace).
    """

    def __init__(self, mesh: MeshState, trust_domain: str = DEFAULT_TRUST_DOMAIN) -> None:
        self.mesh = mesh
        self.trust_domain = trust_domain
        self._services = sorted(mesh.services.values(), key=lambda s: s.ref)
        self._endpoints: dict[str, message.Message] | None = None
        self._clusters: dict[bool, dict[str, message.Message]] = {}  # by mTLS or not
        self._routes: dict[str, message.Message] = {}
        self._hosts: dict[tuple[ServiceRef, int, bool], message.Message] = {}

    def resources(self, proxy: Proxy) -> Resources:
        if proxy.grpc:
            return self._grpc_client(proxy)
        return {
            # The local app's cluster is in the sidecar's bootstrap, so every proxy shares this map.
            resources.CLUSTER: self._mesh_clusters(mtls=True),
            resources.ENDPOINT: self._load_assignments(),
            resources.LISTENER: {
                OUTBOUND: _http_listener(OUTBOUND, proxy.outbound_port),
                INBOUND: _inbound_listener(self.mesh, proxy, self.trust_domain),
            },
            resources.ROUTE: {
                OUTBOUND: self._outbound_routes(proxy),
                INBOUND: _inbound_routes(local_cluster_name(proxy.app_port)),
            },
        }

    def _grpc_client(self, proxy: Proxy) -> Resources:
        """What a proxyless gRPC client needs: an API listener per HTTP service port, named as its
        ``xds:///`` target (``<service>.<namespace>:<port>``), sharing the outbound routes; no sockets."""
        listeners: dict[str, message.Message] = {}
        for svc in self._services:
            for port in svc.ports:
                if port.is_http:
                    target = f"{svc.ref.name}.{svc.ref.namespace}:{port.port}"
                    hcm = hcm_pb2.HttpConnectionManager(
                        rds=hcm_pb2.Rds(route_config_name=OUTBOUND, config_source=_ads()),
                        http_filters=[_http_filter("envoy.filters.http.router", router_pb2.Router())],
                    )
                    listeners[target] = listener_pb2.Listener(
                        name=target, api_listener=api_listener_pb2.ApiListener(api_listener=_typed(hcm))
                    )
        return {
            resources.CLUSTER: self._mesh_clusters(mtls=False),
            resources.ENDPOINT: self._load_assignments(),
            resources.LISTENER: listeners,
            resources.ROUTE: {OUTBOUND: self._outbound_routes(proxy)},
        }

    def _load_assignments(self) -> dict[str, message.Message]:
        if self._endpoints is None:
            self._endpoints = {
                cluster_name(svc.ref, port.port): _load_assignment(
                    cluster_name(svc.ref, port.port), svc, port.port
                )
                for svc in self._services
                for port in svc.ports
            }
        return self._endpoints

    def _mesh_clusters(self, *, mtls: bool) -> dict[str, message.Message]:
        if mtls not in self._clusters:
            self._clusters[mtls] = {
                cluster_name(svc.ref, port.port): _eds_cluster(
                    cluster_name(svc.ref, port.port),
                    tls.upstream(svc.ref.namespace, self.trust_domain) if mtls else None,
                )
                for svc in self._services
                for port in svc.ports
            }
        return self._clusters[mtls]

    def _outbound_routes(self, proxy: Proxy) -> message.Message:
        """A virtual host per HTTP service port, found by Host: short name (same namespace only),
        ``svc.ns``, ``svc.ns.svc`` and the cluster FQDN, with and without the port."""
        namespace = proxy.service.namespace
        if namespace not in self._routes:
            hosts = [
                self._virtual_host(svc, port, i == 0, svc.ref.namespace == namespace)
                for svc in self._services
                for i, port in enumerate(p for p in svc.ports if p.is_http)
            ]
            self._routes[namespace] = route_pb2.RouteConfiguration(name=OUTBOUND, virtual_hosts=hosts)
        return self._routes[namespace]

    def _virtual_host(self, svc: Service, port: Port, first: bool, short: bool) -> message.Message:
        """Virtual hosts differ between namespaces only by the short name: each is built once per kind."""
        key = (svc.ref, port.port, short)
        if key not in self._hosts:
            self._hosts[key] = _virtual_host(self.mesh, svc, port, first, short)
        return self._hosts[key]


# --- clusters -----------------------------------------------------------------------------------


def _eds_cluster(name: str, transport_socket: base_pb2.TransportSocket | None) -> cluster_pb2.Cluster:
    return cluster_pb2.Cluster(
        name=name,
        type=cluster_pb2.Cluster.EDS,
        eds_cluster_config=cluster_pb2.Cluster.EdsClusterConfig(eds_config=_ads()),
        connect_timeout=duration_pb2.Duration(seconds=1),
        transport_socket=transport_socket,
    )


def _load_assignment(name: str, svc: Service, port: int) -> endpoint_pb2.ClusterLoadAssignment:
    return _assignment(name, [(e.address, e.port) for e in svc.endpoints.get(port, ())])


def _assignment(name: str, hosts: list[tuple[str, int]]) -> endpoint_pb2.ClusterLoadAssignment:
    return endpoint_pb2.ClusterLoadAssignment(
        cluster_name=name,
        endpoints=[
            endpoint_components_pb2.LocalityLbEndpoints(
                # gRPC's xDS client wants a locality, weighted, where Envoy would do without.
                locality=base_pb2.Locality(),
                load_balancing_weight=wrappers_pb2.UInt32Value(value=1),
                lb_endpoints=[
                    endpoint_components_pb2.LbEndpoint(
                        endpoint=endpoint_components_pb2.Endpoint(address=_address(host, port))
                    )
                    for host, port in hosts
                ],
            )
        ],
    )


# --- listeners ----------------------------------------------------------------------------------


def _http_listener(
    name: str,
    port: int,
    network_filters: Sequence[listener_components_pb2.Filter] = (),
    http_filters: Sequence[hcm_pb2.HttpFilter] = (),
    transport_socket: base_pb2.TransportSocket | None = None,
) -> listener_pb2.Listener:
    hcm = hcm_pb2.HttpConnectionManager(
        stat_prefix=name,
        rds=hcm_pb2.Rds(route_config_name=name, config_source=_ads()),
        http_filters=[*http_filters, _http_filter("envoy.filters.http.router", router_pb2.Router())],
    )
    chain = [*network_filters, _network_filter("envoy.filters.network.http_connection_manager", hcm)]
    return listener_pb2.Listener(
        name=name,
        address=_address("127.0.0.1", port),
        filter_chains=[listener_components_pb2.FilterChain(filters=chain, transport_socket=transport_socket)],
    )


def _inbound_listener(mesh: MeshState, proxy: Proxy, trust_domain: str) -> listener_pb2.Listener:
    """In front of the app, mTLS only: callers not allowed at all are refused the connection (network
    RBAC); allowed callers get 403 for a route their TrafficTargets do not name (HTTP RBAC). Permissive:
    any caller with a mesh certificate."""
    mtls = tls.downstream()
    if mesh.permissive:
        return _http_listener(INBOUND, proxy.inbound_port, transport_socket=mtls)
    callers = mesh.allowed_callers(proxy.identity)
    anyone_allowed = rbac_pb2.Policy(
        permissions=[rbac_pb2.Permission(any=True)],
        principals=[tls.principal(p.source, trust_domain) for p in callers] or [_nobody()],
    )
    network = network_rbac_pb2.RBAC(
        stat_prefix="inbound_callers",
        rules=rbac_pb2.RBAC(action=rbac_pb2.RBAC.ALLOW, policies={"callers": anyone_allowed}),
    )
    per_caller = {
        str(p.source): rbac_pb2.Policy(
            principals=[tls.principal(p.source, trust_domain)],
            permissions=[_permission(m) for m in p.http] or [_nothing()],
        )
        for p in callers
    }
    http = http_rbac_pb2.RBAC(rules=rbac_pb2.RBAC(action=rbac_pb2.RBAC.ALLOW, policies=per_caller))
    return _http_listener(
        INBOUND,
        proxy.inbound_port,
        network_filters=[_network_filter("envoy.filters.network.rbac", network)],
        http_filters=[_http_filter("envoy.filters.http.rbac", http)],
        transport_socket=mtls,
    )


def _nobody() -> rbac_pb2.Principal:
    return rbac_pb2.Principal(not_id=rbac_pb2.Principal(any=True))


def _nothing() -> rbac_pb2.Permission:
    return rbac_pb2.Permission(not_rule=rbac_pb2.Permission(any=True))


def _permission(m: HttpMatch) -> rbac_pb2.Permission:
    """All of a match's conditions: the path regex (which must match the whole path), a method, headers."""
    rules = []
    if m.path_regex:
        path = string_pb2.StringMatcher(safe_regex=_regex(m.path_regex))
        rules.append(rbac_pb2.Permission(url_path=path_pb2.PathMatcher(path=path)))
    if m.methods:
        methods = [rbac_pb2.Permission(header=_header(":method", exact=method)) for method in m.methods]
        rules.append(rbac_pb2.Permission(or_rules=rbac_pb2.Permission.Set(rules=methods)))
    rules += [rbac_pb2.Permission(header=_header(name, regex=pattern)) for name, pattern in m.headers]
    if not rules:
        return rbac_pb2.Permission(any=True)
    return rbac_pb2.Permission(and_rules=rbac_pb2.Permission.Set(rules=rules))


# --- routes -------------------------------------------------------------------------------------


def _virtual_host(
    mesh: MeshState, svc: Service, port: Port, first: bool, short: bool
) -> route_components_pb2.VirtualHost:
    names = [
        f"{svc.ref.name}.{svc.ref.namespace}",
        f"{svc.ref.name}.{svc.ref.namespace}.svc",
        f"{svc.ref.name}.{svc.ref.namespace}.svc.{CLUSTER_DOMAIN}",
    ]
    if short:
        names.insert(0, svc.ref.name)
    return route_components_pb2.VirtualHost(
        name=cluster_name(svc.ref, port.port),
        domains=[f"{n}:{port.port}" for n in names] + (names if first else []),
        routes=[_route(mesh.splits.get((svc.ref, port.port)), cluster_name(svc.ref, port.port))],
    )


def _route(split: Split | None, cluster: str) -> route_components_pb2.Route:
    match = route_components_pb2.RouteMatch(prefix="/")
    if split is None:
        return route_components_pb2.Route(
            match=match, route=route_components_pb2.RouteAction(cluster=cluster)
        )
    weighted = route_components_pb2.WeightedCluster(
        clusters=[
            route_components_pb2.WeightedCluster.ClusterWeight(
                name=cluster_name(b.service, split.port), weight=wrappers_pb2.UInt32Value(value=b.weight)
            )
            for b in split.backends
        ]
    )
    return route_components_pb2.Route(
        match=match, route=route_components_pb2.RouteAction(weighted_clusters=weighted)
    )


def _inbound_routes(local_cluster: str) -> route_pb2.RouteConfiguration:
    return route_pb2.RouteConfiguration(
        name=INBOUND,
        virtual_hosts=[
            route_components_pb2.VirtualHost(
                name=local_cluster,
                domains=["*"],
                routes=[
                    route_components_pb2.Route(
                        match=route_components_pb2.RouteMatch(prefix="/"),
                        route=route_components_pb2.RouteAction(cluster=local_cluster),
                    )
                ],
            )
        ],
    )


# --- building blocks ----------------------------------------------------------------------------


def _ads() -> config_source_pb2.ConfigSource:
    return config_source_pb2.ConfigSource(
        ads=config_source_pb2.AggregatedConfigSource(), resource_api_version=config_source_pb2.V3
    )


def _address(host: str, port: int) -> address_pb2.Address:
    return address_pb2.Address(socket_address=address_pb2.SocketAddress(address=host, port_value=port))


def _typed(msg: message.Message) -> any_pb2.Any:
    packed = any_pb2.Any()
    packed.Pack(msg)
    return packed


def _network_filter(name: str, config: message.Message) -> listener_components_pb2.Filter:
    return listener_components_pb2.Filter(name=name, typed_config=_typed(config))


def _http_filter(name: str, config: message.Message) -> hcm_pb2.HttpFilter:
    return hcm_pb2.HttpFilter(name=name, typed_config=_typed(config))


def _regex(pattern: str) -> regex_pb2.RegexMatcher:
    return regex_pb2.RegexMatcher(regex=pattern)


def _header(name: str, *, exact: str = "", regex: str = "") -> route_components_pb2.HeaderMatcher:
    matcher = (
        string_pb2.StringMatcher(exact=exact) if exact else string_pb2.StringMatcher(safe_regex=_regex(regex))
    )
    return route_components_pb2.HeaderMatcher(name=name, string_match=matcher)

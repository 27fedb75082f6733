"""MeshState + one proxy -> that proxy's Envoy resources. Pure and deterministic.

Sidecars are local processes or pods. A pod's sidecar (``Proxy.pod``) is
**transparent**: the pod's iptables rules (``gitmesh.inject.capture``) redirect
what the app sends to the **outbound** listener and what it receives to the
**inbound** listener, and both read the original destination (``SO_ORIGINAL_DST``).
Outbound, HTTP to a service port is routed by Host (the service's names and its
ClusterIP) and TCP by ClusterIP and port; then the pod's Egress (HTTP by Host and TLS by server
name on their ports, TCP by original destination range and port); anything else is closed, or
passes through to where it was going (``passthrough``) when the MeshConfig enables egress.
Inbound, each port the pod serves to the mesh takes mTLS only (or its IngressBackend's ingress)
and hands traffic on to the app at the address it was sent to, rate limited as a process
sidecar's inbound listener is; other ports pass through.

A local process sidecar has no iptables capture. An
app reaches HTTP services through its sidecar's **outbound** listener
(``http://127.0.0.1:<outbound_port>`` with the service as Host). TCP has no Host
to route by, so each TCP service port an app calls is an **upstream** of its
sidecar, given in the bootstrap: a listener on a local port of the app's choosing
(``127.0.0.1:<local_port>``) that proxies to that service. The mesh reaches the
app through the sidecar's **inbound** listener, which is what a service's
endpoints point at: HTTP, or TCP when the ports it serves are not HTTP.

Sidecars talk mTLS (``gitmesh.xds.tls``): a caller's identity is the SPIFFE ID
in its certificate, and the destination admits callers by it: HTTP by RBAC
filters, TCP already in the TLS handshake (a server that speaks first must say
nothing to a caller that is not allowed).

Resource names, the one scheme used everywhere (users read them in
``/config_dump``):

============================  =====================================================
cluster, load assignment      ``<namespace>/<service>|<port>``; the local app: ``local|<app_port>``
                              (a static cluster of the sidecar's bootstrap); an external host a
                              caller's Egress allows: ``egress|<host>:<port>`` (DNS, no assignment;
                              a ``*.`` wildcard's a dynamic forward proxy); any host (MeshConfig
                              enableEgress): ``egress|*``; a pod's original destination: ``passthrough``
listener                      ``outbound``, ``inbound``; upstreams: ``outbound|<namespace>/<service>|<port>``
route configuration           ``outbound``, ``inbound``; a pod's port with an IngressBackend or rate
                              limits: ``inbound|<port>``
virtual host, filter chain    egress: ``egress|<host>:<port>``, HTTP on ``outbound`` routes, TLS
                              on the ``outbound`` listener (after its HTTP chain); a pod's HTTP
                              egress chain ``egress|http:<port>``, TCP ``egress|tcp:<port>``; the
                              enableEgress virtual host ``egress|*``; without it, the catch-all of
                              the services a caller may not call ``refused``
secret (SDS)                  ``workload-cert``: the sidecar's own identity's certificate and key;
                              ``trust-bundle``: the mesh's root certificates
============================  =====================================================
"""

from __future__ import annotations

import functools
import ipaddress
import re
from collections import defaultdict
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from envoy.config.cluster.v3 import cluster_pb2
from envoy.config.core.v3 import address_pb2, base_pb2, config_source_pb2, protocol_pb2
from envoy.config.endpoint.v3 import endpoint_components_pb2, endpoint_pb2
from envoy.config.listener.v3 import api_listener_pb2, listener_components_pb2, listener_pb2
from envoy.config.rbac.v3 import rbac_pb2
from envoy.config.route.v3 import route_components_pb2, route_pb2
from envoy.extensions.filters.http.fault.v3 import fault_pb2
from envoy.extensions.filters.http.rbac.v3 import rbac_pb2 as http_rbac_pb2
from envoy.extensions.filters.http.router.v3 import router_pb2
from envoy.extensions.filters.listener.original_dst.v3 import original_dst_pb2
from envoy.extensions.filters.network.direct_response.v3 import config_pb2 as direct_response_pb2
from envoy.extensions.filters.network.http_connection_manager.v3 import http_connection_manager_pb2 as hcm_pb2
from envoy.extensions.filters.network.rbac.v3 import rbac_pb2 as network_rbac_pb2
from envoy.extensions.filters.network.tcp_proxy.v3 import tcp_proxy_pb2
from envoy.extensions.upstreams.http.v3 import http_protocol_options_pb2 as http_options_pb2
from envoy.type.matcher.v3 import path_pb2, regex_pb2, string_pb2
from google.protobuf import any_pb2, duration_pb2, message, wrappers_pb2

from gitmesh.certs.ca import DEFAULT_TRUST_DOMAIN
from gitmesh.inject.capture import INBOUND_SOURCE
from gitmesh.mesh.state import (
    ConnectionLimits,
    EgressRule,
    Fault,
    HeaderEdit,
    HttpMatch,
    Identity,
    IngressRule,
    MeshState,
    Port,
    Redirect,
    RetryPolicy,
    Rewrite,
    Service,
    ServiceRef,
    ServiceRoutes,
    Split,
    literal,
    whole_path_regex,
)
from gitmesh.xds import policy, resources, tls, wire

OUTBOUND = "outbound"
INBOUND = "inbound"
CLUSTER_DOMAIN = "cluster.local"
HTTP_RBAC = "envoy.filters.http.rbac"
REFUSED = "refused"  # the outbound routes' catch-all virtual host: what a caller may not call
PASSTHROUGH = policy.PASSTHROUGH
# What a pod's sidecar received, on to its app at the address it was sent to, from the address
# capture leaves alone (its connections to its own pod are captured again, into its inbound).
INBOUND_PASSTHROUGH = "inbound-passthrough"
HTTP_PROTOCOL_OPTIONS = "envoy.extensions.upstreams.http.v3.HttpProtocolOptions"


@dataclass(frozen=True, order=True)
class Upstream:
    """A service port the app reaches at ``127.0.0.1:<local_port>`` of its sidecar (how TCP is called)."""

    service: ServiceRef
    port: int
    local_port: int

    def __str__(self) -> str:
        return f"{self.service}:{self.port}={self.local_port}"


@dataclass(frozen=True, order=True)
class Pod:
    """The pod an injected sidecar runs in, as the downward API gives it to its bootstrap."""

    namespace: str
    name: str
    uid: str
    ip: str

    def __str__(self) -> str:
        return f"{self.namespace}/{self.name}"


@dataclass(frozen=True)
class Proxy:
    """One sidecar, as its bootstrap describes it (node metadata). A pod's sidecar (``pod``) fronts
    whatever Services select the pod: its ``service`` names its namespace only (``""``), and its
    ``app_port`` is unused (traffic goes on to where it was sent)."""

    identity: Identity
    service: ServiceRef
    app_port: int
    outbound_port: int
    inbound_port: int
    upstreams: tuple[Upstream, ...] = ()
    inbound_address: str = "127.0.0.1"  # what the service's endpoints name: the pod's address
    grpc: bool = False  # a proxyless gRPC client (xds:/// targets), not an Envoy sidecar
    pod: Pod | None = None  # an injected pod's transparent sidecar


class AssembledRoutes:
    """A RouteConfiguration written straight from its virtual hosts' bytes, never built as a message.

    Every caller namespace's outbound routes hold every service's virtual host again: built as
    messages, each would copy them all, and be serialized again, at every mesh change. Assembled,
    the hosts are serialized once and each namespace's routes are just their bytes one after another
    (byte for byte what serializing the message gives). It stays in those pieces
    (``serialized_parts``): snapshots keep and send the pieces, so namespaces share their hosts'
    bytes everywhere. Read like the message (``.virtual_hosts``), it is parsed on demand.
    """

    DESCRIPTOR = route_pb2.RouteConfiguration.DESCRIPTOR

    def __init__(self, name: str, hosts: Sequence[bytes]) -> None:
        """``hosts``: the virtual hosts already written as the message's field 2 (``host_field``), each
        whole or in pieces (``_refusals``)."""
        self.name = name
        self._parts = (wire.field(1, name.encode()), *hosts)

    @staticmethod
    def host_field(host: route_components_pb2.VirtualHost) -> bytes:
        return wire.field(2, host.SerializeToString(deterministic=True))

    def serialized_parts(self) -> tuple[bytes, ...]:
        return self._parts

    def SerializeToString(self, deterministic: bool = False) -> bytes:  # the name of the message method
        return b"".join(self._parts)

    def parsed(self) -> route_pb2.RouteConfiguration:
        return route_pb2.RouteConfiguration.FromString(self.SerializeToString())

    def __getattr__(self, attribute: str) -> Any:
        return getattr(self.parsed(), attribute)


Resources = dict[str, Mapping[str, message.Message | AssembledRoutes]]  # type URL -> name -> resource
Scope = frozenset[str] | None  # the namespaces whose services a proxy may call; None: every one


def cluster_name(service: ServiceRef, port: int) -> str:
    return f"{service.namespace}/{service.name}|{port}"


def local_cluster_name(app_port: int) -> str:
    return f"local|{app_port}"


def upstream_listener_name(upstream: Upstream) -> str:
    return f"{OUTBOUND}|{cluster_name(upstream.service, upstream.port)}"


def translate(mesh: MeshState, proxy: Proxy, trust_domain: str = DEFAULT_TRUST_DOMAIN) -> Resources:
    """Every resource ``proxy`` needs, keyed by type URL and name, but its secrets (``tls.secrets``)."""
    return Translator(mesh, trust_domain).resources(proxy)


class Translator:
    """Translates one MeshState for many proxies.

    A proxy is sent only the services its identity may call: those of the namespaces of the
    destinations its TrafficTargets name (a destination identity backs services of its own namespace
    only; which of them is not known without the pods), every service in permissive mode.

    What proxies share is built once and the same message objects go into every
    snapshot (so they are serialized once too): per set of namespaces reached, the clusters and
    load assignments (each sidecar presents its own certificate under the one secret name;
    proxyless gRPC clients get plaintext clusters), and the outbound routes per caller namespace
    too (short names resolve in the caller's namespace).

    Egress is off unless the MeshConfig enables it: a caller reaches an external host only where
    an Egress rule names its identity (HTTP by Host on its outbound routes, TLS by server name on
    its outbound listener, and a pod's TCP by original destination). An
    ingress-only backend port (IngressBackend) admits its ingress alone: identities over mTLS (they
    are sent that backend's namespace as if a TrafficTarget named it), or addresses in plaintext.
    """

    def __init__(self, mesh: MeshState, trust_domain: str = DEFAULT_TRUST_DOMAIN) -> None:
        self.mesh = mesh
        self.trust_domain = trust_domain
        self._services = sorted(mesh.services.values(), key=lambda s: s.ref)
        self._reached: dict[Identity, Scope] | None = None
        self._endpoints: dict[Scope, dict[str, message.Message]] = {}
        # by mTLS or not, and with pods' passthrough
        self._clusters: dict[tuple[bool, Scope] | tuple[bool, Scope, str], dict[str, message.Message]] = {}
        # Each service port's cluster (by mTLS or not) and load assignment, built once and shared by
        # the scopes that reach it: a message holds several times its encoding in memory.
        self._service_clusters: dict[tuple[bool, ServiceRef, int], message.Message] = {}
        self._service_assignments: dict[tuple[ServiceRef, int], message.Message] = {}
        self._routes: dict[tuple[str, Scope, Identity | None, bool, bool], AssembledRoutes] = {}
        self._hosts: dict[
            tuple[ServiceRef, int, bool, RetryPolicy | None, Fault | None, ServiceRoutes | None], bytes
        ] = {}
        # Each refused service's RBAC policy, written once for callers outside its namespace and once
        # for those in it (they may call it by its short name): every caller's routes share them.
        self._refused: dict[tuple[ServiceRef, bool], bytes] = {}
        self._transparent: dict[tuple[Scope, int, Identity | None], listener_pb2.Listener] = {}
        self._retries = {(r.source, r.destination): r for r in mesh.retries}
        self._faults = {(f.source, f.destination): f for f in mesh.faults}
        self._egress: dict[Identity, list[EgressRule]] = defaultdict(list)
        for rule in dict.fromkeys(mesh.egress):
            self._egress[rule.source].append(rule)
        self._ingress = {(rule.backend, rule.port): rule for rule in mesh.ingress}
        self._limits = {lim.service: lim for lim in mesh.limits}
        # Rate limits hold at the sidecars a limited service's endpoints point at (or of that service).
        self._rates: dict[ServiceRef | tuple[str, int], ConnectionLimits] = {}
        for lim in mesh.limits:
            if lim.connection_rate or lim.request_rate or lim.route_rates:
                self._rates.setdefault(lim.service, lim)
                svc = mesh.services.get(lim.service)
                for endpoint in (e for ends in (svc.endpoints.values() if svc else ()) for e in ends):
                    self._rates.setdefault((endpoint.address, endpoint.port), lim)
        # Callers some retry, fault or HTTP egress names by identity get routes of their own; the
        # rest share.
        self._own_routes = (
            frozenset(r.source for r in mesh.retries)
            | frozenset(f.source for f in mesh.faults if f.source is not None)
            | frozenset(e.source for e in mesh.egress if e.protocol == "http")
        )

    def resources(self, proxy: Proxy) -> Resources:
        if proxy.grpc:
            return self._grpc_client(proxy)
        if proxy.pod is not None:
            return self._pod_resources(proxy, proxy.pod)
        # A process sidecar is called at its own address: TCP egress (by address) is for pods.
        egress = [rule for rule in self._egress.get(proxy.identity, []) if rule.protocol != "tcp"]
        outbound = _http_listener(
            OUTBOUND, "127.0.0.1", proxy.outbound_port, http_filters=self._outbound_filters(proxy.identity)
        )
        tls_egress = [rule for rule in egress if rule.protocol == "tls"]
        if tls_egress:
            outbound.listener_filters.append(policy.tls_inspector())
            outbound.filter_chains.extend(policy.egress_tls_chain(rule) for rule in tls_egress)
        ingress = self._ingress.get((proxy.service, proxy.app_port))
        rates = self._rates.get((proxy.inbound_address, proxy.inbound_port)) or self._rates.get(proxy.service)
        listeners = {
            OUTBOUND: outbound,
            INBOUND: _inbound_listener(self.mesh, proxy, self.trust_domain, ingress, rates),
        }
        for upstream in proxy.upstreams:
            # Built for each proxy, not kept: a proxy names its upstreams' local ports as it likes.
            listeners[upstream_listener_name(upstream)] = _upstream_listener(self.mesh, upstream)
        scope = self.scope(proxy.identity)
        # The local app's cluster is in the sidecar's bootstrap, so proxies of a scope share this map.
        clusters = self._mesh_clusters(scope, mtls=True)
        if external := self._egress_clusters(egress):  # else the scope's shared map, as it is
            clusters = clusters | external
        return {
            resources.CLUSTER: clusters,
            resources.ENDPOINT: self._load_assignments(scope),
            resources.LISTENER: listeners,
            resources.ROUTE: {
                OUTBOUND: self._outbound_routes(proxy),
                INBOUND: _inbound_routes(self.mesh, proxy, self.trust_domain, ingress, rates),
            },
        }

    @staticmethod
    def _egress_clusters(rules: Sequence[EgressRule]) -> dict[str, message.Message]:
        return {policy.egress_cluster_name(r): policy.egress_cluster(r) for r in rules}

    def _outbound_filters(self, caller: Identity) -> list[hcm_pb2.HttpFilter]:
        """The RBAC filter of the refusals (``_refusals``), the fault filter (it does nothing but where
        a route's per-filter config says so) and, for a caller with wildcard HTTP egress or with
        enableEgress, the forward proxy's (it resolves only for its own clusters)."""
        filters = [_http_filter(policy.FAULT_FILTER, fault_pb2.HTTPFault())] if self.mesh.faults else []
        if self._refuses(self.scope(caller)):  # it does nothing but on the refusals' route
            filters.insert(0, _http_filter(HTTP_RBAC, http_rbac_pb2.RBAC()))
        if self.mesh.egress_open or any(
            r.wildcard and r.protocol == "http" for r in self._egress.get(caller, [])
        ):
            filters.append(_http_filter(policy.FORWARD_PROXY_FILTER, policy.forward_proxy_filter()))
        return filters

    def _pod_resources(self, proxy: Proxy, pod: Pod) -> Resources:
        scope = self.scope(proxy.identity)
        egress = self._egress.get(proxy.identity, [])
        clusters = self._mesh_clusters(scope, mtls=True, passthrough=True)
        if external := self._egress_clusters([r for r in egress if r.protocol != "tcp"]):
            clusters = clusters | external
        routes = {
            OUTBOUND: self._outbound_routes(proxy),
            INBOUND: _inbound_routes(self.mesh, proxy, self.trust_domain, None, None, INBOUND_PASSTHROUGH),
        }
        chains = []
        for port, is_http in sorted(_pod_ports(self.mesh, pod).items()):
            ingress = next(
                (r for svc in _pod_services(self.mesh, pod, port) if (r := self._ingress.get((svc, port)))),
                None,
            )
            rates = self._rates.get((pod.ip, port))
            if ingress is not None or rates is not None:
                # A route configuration of its own: the ingress's rules, the paths' buckets.
                name = f"{INBOUND}|{port}"
                own = _inbound_routes(
                    self.mesh, proxy, self.trust_domain, ingress, rates, INBOUND_PASSTHROUGH
                )
                own.name = name
                routes[name] = own
            chains += _transparent_inbound_chains(
                self.mesh, proxy, port, is_http or ingress is not None, ingress, rates, self.trust_domain
            )
        return {
            resources.CLUSTER: clusters,
            resources.ENDPOINT: self._load_assignments(scope),
            resources.LISTENER: {
                OUTBOUND: self._transparent_outbound(scope, proxy.outbound_port, proxy.identity),
                INBOUND: _transparent_listener(
                    INBOUND,
                    proxy.inbound_port,
                    chains,
                    passthrough=INBOUND_PASSTHROUGH,
                    inspect_tls=any(c.filter_chain_match.transport_protocol for c in chains),
                ),
            },
            resources.ROUTE: routes,
        }

    def _transparent_outbound(self, scope: Scope, port: int, caller: Identity) -> listener_pb2.Listener:
        """What a pod sends, by original destination: a chain per HTTP service port (routed by Host,
        over the ClusterIPs with that port, also those of the services the pod may not call, which
        its routes refuse and count), one per TCP service port (its ClusterIPs), then the
        caller's egress (HTTP by Host and TLS by server name on their ports, TCP by address); the
        rest passes through with MeshConfig enableEgress, else is closed. Shared by the pods of a
        scope whose identity no Egress names."""
        egress = self._egress.get(caller, [])
        key = (scope, port, caller if egress else None)
        if key in self._transparent:
            return self._transparent[key]
        http: dict[int, list[str]] = defaultdict(list)
        if self._refuses(scope):
            for svc in self._unreached(scope):
                for p in svc.ports:
                    if p.is_http and p.protocol == "TCP" and svc.cluster_ips:
                        http[p.port] += svc.cluster_ips
        chains = []
        for svc in self._reachable(scope):
            for p in svc.ports:
                if not svc.cluster_ips or p.protocol != "TCP":
                    continue
                if p.is_http:
                    http[p.port] += svc.cluster_ips
                    continue
                tcp = _tcp_proxy(self.mesh, svc.ref, p.port, f"{OUTBOUND}|{cluster_name(svc.ref, p.port)}")
                chains.append(
                    listener_components_pb2.FilterChain(
                        name=cluster_name(svc.ref, p.port),
                        filter_chain_match=_destination(svc.cluster_ips, p.port),
                        filters=[_network_filter("envoy.filters.network.tcp_proxy", tcp)],
                    )
                )
        filters = self._outbound_filters(caller)
        for number, ips in sorted(http.items()):
            chain = _http_listener(OUTBOUND, "", 0, http_filters=filters).filter_chains[0]
            chain.name = f"{OUTBOUND}|{number}"
            chain.filter_chain_match.CopyFrom(_destination(ips, number))
            chains.append(chain)
        tcp_ranges: dict[int, set[str] | None] = {}  # None: any address
        for rule in (r for r in egress if r.protocol == "tcp"):
            found = tcp_ranges.get(rule.port, set())
            tcp_ranges[rule.port] = None if found is None or not rule.ranges else found | set(rule.ranges)
        chains += [
            policy.egress_tcp_chain(number, sorted(ranges or ()))
            for number, ranges in sorted(tcp_ranges.items())
        ]
        # HTTP egress on a port whose every address TCP egress passes already would match alike.
        for number in sorted(
            {r.port for r in egress if r.protocol == "http"} - {n for n, r in tcp_ranges.items() if r is None}
        ):
            chain = _http_listener(OUTBOUND, "", 0, http_filters=filters).filter_chains[0]
            chain.name = f"egress|http:{number}"
            chain.filter_chain_match.destination_port.value = number
            chains.append(chain)
        chains += [policy.egress_tls_chain(r, by_port=True) for r in egress if r.protocol == "tls"]
        listener = _transparent_listener(
            OUTBOUND,
            port,
            chains,
            passthrough=PASSTHROUGH if self.mesh.egress_open else None,
            inspect_tls=any(r.protocol == "tls" for r in egress),
        )
        self._transparent[key] = listener
        return listener

    def _grpc_client(self, proxy: Proxy) -> Resources:
        """What a proxyless gRPC client needs: an API listener per HTTP service port, named as its
        ``xds:///`` target (``<service>.<namespace>:<port>``), sharing the outbound routes; no sockets."""
        scope = self.scope(proxy.identity)
        listeners: dict[str, message.Message] = {}
        for svc in self._reachable(scope):
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
            resources.CLUSTER: self._mesh_clusters(scope, mtls=False),
            resources.ENDPOINT: self._load_assignments(scope),
            resources.LISTENER: listeners,
            resources.ROUTE: {OUTBOUND: self._outbound_routes(proxy)},
        }

    def scope(self, identity: Identity) -> Scope:
        """The namespaces whose services ``identity`` may call; None: all of them (permissive)."""
        if self.mesh.permissive:
            return None
        if self._reached is None:
            reached: dict[Identity, set[str]] = defaultdict(set)
            for p in self.mesh.permissions:
                reached[p.caller].add(p.destination.namespace)
            for rule in self.mesh.ingress:
                for source in rule.sources:
                    reached[source].add(rule.backend.namespace)
            # A caller that reaches a routed service reaches the backends of the routes it takes:
            # a consumer route's are in its own namespace, a ReferenceGrant's in another.
            routed = {
                (r.service.namespace, r.callers, b.service.namespace)
                for r in self.mesh.routes.values()
                for rule in r.rules
                for b in rule.backends
            }
            for caller, found in reached.items():
                found |= {
                    backend
                    for target, callers, backend in routed
                    if target in found and callers in (None, caller.namespace)
                }
            self._reached = {identity: frozenset(found) for identity, found in reached.items()}
        return self._reached.get(identity, frozenset())

    def _reachable(self, scope: Scope) -> list[Service]:
        return [svc for svc in self._services if scope is None or svc.ref.namespace in scope]

    def _unreached(self, scope: Scope) -> list[Service]:
        return [svc for svc in self._services if scope is not None and svc.ref.namespace not in scope]

    def _load_assignments(self, scope: Scope) -> dict[str, message.Message]:
        if scope not in self._endpoints:
            self._endpoints[scope] = {
                cluster_name(svc.ref, port.port): self._service_assignment(svc, port.port)
                for svc in self._reachable(scope)
                for port in svc.ports
            }
        return self._endpoints[scope]

    def _mesh_clusters(
        self, scope: Scope, *, mtls: bool, passthrough: bool = False
    ) -> dict[str, message.Message]:
        if passthrough:
            key = (True, scope, PASSTHROUGH)
            if key not in self._clusters:
                self._clusters[key] = {
                    **self._mesh_clusters(scope, mtls=True),
                    PASSTHROUGH: _passthrough(PASSTHROUGH),
                    INBOUND_PASSTHROUGH: _passthrough(INBOUND_PASSTHROUGH, INBOUND_SOURCE),
                }
            return self._clusters[key]
        if (mtls, scope) not in self._clusters:
            self._clusters[(mtls, scope)] = {
                cluster_name(svc.ref, port.port): self._service_cluster(svc, port, mtls)
                for svc in self._reachable(scope)
                for port in svc.ports
            }
            if mtls and self.mesh.egress_open:  # what the sidecars' "*" virtual host routes to
                self._clusters[(mtls, scope)][policy.OPEN_EGRESS] = policy.forward_proxy_cluster(
                    policy.OPEN_EGRESS
                )
        return self._clusters[(mtls, scope)]

    def _service_assignment(self, svc: Service, port: int) -> message.Message:
        key = (svc.ref, port)
        if key not in self._service_assignments:
            self._service_assignments[key] = _load_assignment(cluster_name(svc.ref, port), svc, port)
        return self._service_assignments[key]

    def _service_cluster(self, svc: Service, port: Port, mtls: bool) -> message.Message:
        key = (mtls, svc.ref, port.port)
        if key not in self._service_clusters:
            self._service_clusters[key] = _eds_cluster(
                cluster_name(svc.ref, port.port),
                tls.upstream(svc.ref.namespace, self.trust_domain) if mtls else None,
                self._limits.get(svc.ref),
                http2=port.is_http2,
            )
        return self._service_clusters[key]

    def _outbound_routes(self, proxy: Proxy) -> AssembledRoutes:
        """A virtual host per HTTP service port, found by Host: short name (same namespace only),
        ``svc.ns``, ``svc.ns.svc`` and the cluster FQDN, with and without the port."""
        caller = proxy.identity if proxy.identity in self._own_routes else None
        # A proxyless gRPC client has no forward proxy cluster for enableEgress's catch-all, and
        # no stats for refusals to be counted in.
        open_egress = self.mesh.egress_open and not proxy.grpc
        scope = self.scope(proxy.identity)
        refuses = self._refuses(scope) and not proxy.grpc
        key = (proxy.service.namespace, scope, caller, open_egress, refuses)
        if key not in self._routes:
            hosts = [
                self._virtual_host(svc, port, i == 0, key[0], proxy.identity)
                for svc in self._reachable(scope)
                for i, port in enumerate(p for p in svc.ports if p.is_http)
            ]
            hosts += self._egress_hosts(proxy.identity)
            if open_egress:
                hosts.append(AssembledRoutes.host_field(policy.open_egress_virtual_host()))
            unreached = [svc for svc in self._unreached(scope) if any(p.is_http for p in svc.ports)]
            if refuses and unreached:
                hosts += _refusals([self._refusal(svc, key[0]) for svc in unreached])
            self._routes[key] = AssembledRoutes(OUTBOUND, hosts)
        return self._routes[key]

    def _refusal(self, svc: Service, namespace: str) -> bytes:
        key = (svc.ref, svc.ref.namespace == namespace)
        if key not in self._refused:
            self._refused[key] = _refusal_policy(svc, namespace)
        return self._refused[key]

    def _refuses(self, scope: Scope) -> bool:
        """Whether a caller's refused calls reach the refusals' catch-all: not in permissive mode
        (nothing is refused), nor with enableEgress (whose catch-all sends any other host out)."""
        return scope is not None and not self.mesh.egress_open

    def _egress_hosts(self, caller: Identity) -> list[bytes]:
        """A virtual host per external host and port the caller's HTTP egress names, for the
        requests its rules match (all of them when one rule has no matches)."""
        by_host: dict[tuple[str, int], list[EgressRule]] = defaultdict(list)
        for rule in self._egress.get(caller, []):
            if rule.protocol == "http":
                by_host[(rule.host, rule.port)].append(rule)
        hosts = []
        for rules in by_host.values():
            every = any(not r.http_matches for r in rules)
            matches = [] if every else list(dict.fromkeys(m for r in rules for m in r.http_matches))
            host = policy.egress_virtual_host(rules[0], [_route_match(m) for m in matches])
            hosts.append(AssembledRoutes.host_field(host))
        return hosts

    def _virtual_host(self, svc: Service, port: Port, first: bool, namespace: str, caller: Identity) -> bytes:
        """Virtual hosts differ between namespaces by the short name and their consumer routes,
        and between callers by their retries and faults: each is built and serialized once per kind."""
        retry = self._retries.get((caller, svc.ref))
        fault = self._faults.get((caller, svc.ref)) or self._faults.get((None, svc.ref))
        short = svc.ref.namespace == namespace
        routes = self.mesh.routes_for(svc.ref, port.port, namespace)
        key = (svc.ref, port.port, short, retry, fault, routes)
        if key not in self._hosts:
            host = _virtual_host(self.mesh, svc, port, first, short, routes)
            if retry is not None:
                host.retry_policy.CopyFrom(policy.retry_policy(retry))
            if fault is not None:
                host.typed_per_filter_config[policy.FAULT_FILTER].CopyFrom(_typed(policy.http_fault(fault)))
            self._hosts[key] = AssembledRoutes.host_field(host)
        return self._hosts[key]


# --- clusters -----------------------------------------------------------------------------------


def _eds_cluster(
    name: str,
    transport_socket: base_pb2.TransportSocket | None,
    limits: ConnectionLimits | None = None,
    *,
    http2: bool = False,
) -> cluster_pb2.Cluster:
    cluster = cluster_pb2.Cluster(
        name=name,
        type=cluster_pb2.Cluster.EDS,
        eds_cluster_config=cluster_pb2.Cluster.EdsClusterConfig(eds_config=_ads()),
        connect_timeout=duration_pb2.Duration(seconds=1),
        transport_socket=transport_socket,
    )
    if http2:  # Envoy speaks HTTP/1.1 upstream unless told: gRPC needs HTTP/2 to the next sidecar
        options = http_options_pb2.HttpProtocolOptions(
            explicit_http_config=http_options_pb2.HttpProtocolOptions.ExplicitHttpConfig(
                http2_protocol_options=protocol_pb2.Http2ProtocolOptions()
            )
        )
        cluster.typed_extension_protocol_options[HTTP_PROTOCOL_OPTIONS].CopyFrom(_typed(options))
    if limits is not None:
        cluster.circuit_breakers.CopyFrom(policy.circuit_breakers(limits))
        if limits.max_requests_per_connection is not None:
            cluster.max_requests_per_connection.value = limits.max_requests_per_connection
        if limits.connect_timeout_ms is not None:
            cluster.connect_timeout.FromMilliseconds(limits.connect_timeout_ms)
    return cluster


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
    host: str,
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
        address=_address(host, port),
        filter_chains=[listener_components_pb2.FilterChain(filters=chain, transport_socket=transport_socket)],
    )


def _upstream_listener(mesh: MeshState, upstream: Upstream) -> listener_pb2.Listener:
    """A local port proxying each connection to the service, or by weight to a split's backends."""
    tcp = _tcp_proxy(mesh, upstream.service, upstream.port, upstream_listener_name(upstream))
    return listener_pb2.Listener(
        name=upstream_listener_name(upstream),
        address=_address("127.0.0.1", upstream.local_port),
        filter_chains=[
            listener_components_pb2.FilterChain(
                filters=[_network_filter("envoy.filters.network.tcp_proxy", tcp)]
            )
        ],
    )


def _tcp_proxy(mesh: MeshState, service: ServiceRef, port: int, stat_prefix: str) -> tcp_proxy_pb2.TcpProxy:
    """Each connection to the service, or by weight to a split's backends."""
    split = mesh.splits.get((service, port))
    tcp = tcp_proxy_pb2.TcpProxy(stat_prefix=stat_prefix)
    if split is None:
        tcp.cluster = cluster_name(service, port)
    else:
        tcp.weighted_clusters.CopyFrom(
            tcp_proxy_pb2.TcpProxy.WeightedCluster(
                clusters=[
                    tcp_proxy_pb2.TcpProxy.WeightedCluster.ClusterWeight(
                        name=cluster_name(b.service, split.port), weight=b.weight
                    )
                    for b in split.backends
                    if b.weight  # tcp_proxy refuses a zero weight; such a backend gets nothing anyway
                ]
            )
        )
    return tcp


def _inbound_listener(
    mesh: MeshState,
    proxy: Proxy,
    trust_domain: str,
    ingress: IngressRule | None,
    rates: ConnectionLimits | None,
) -> listener_pb2.Listener:
    """In front of the app, mTLS only: HTTP unless every port the sidecar serves is TCP (an
    ingress-only port is HTTP: an IngressBackend port speaks http or https). Connections and
    requests past a rate limit are refused after the callers' check, so refused callers spend none."""
    connection_rate = (
        [_network_filter(policy.CONNECTION_RATE_FILTER, policy.connection_rate(rates.connection_rate))]
        if rates and rates.connection_rate
        else []
    )
    served = _served_ports(mesh, proxy)
    if ingress is None and served and not any(p.is_http for p in served):
        return _inbound_tcp_listener(mesh, proxy, {p.port for p in served}, trust_domain, connection_rate)
    request_rate = []
    if rates and rates.request_rate:
        request_rate = [_http_filter(policy.REQUEST_RATE_FILTER, policy.request_rate(rates.request_rate))]
    elif rates and rates.route_rates:
        request_rate = [_http_filter(policy.REQUEST_RATE_FILTER, policy.route_rates_only())]
    if ingress is not None and not ingress.mtls:
        return _inbound_plaintext_listener(proxy, ingress, connection_rate, request_rate)
    return _inbound_http_listener(mesh, proxy, trust_domain, ingress, connection_rate, request_rate)


def _inbound_plaintext_listener(
    proxy: Proxy,
    ingress: IngressRule,
    connection_rate: Sequence[listener_components_pb2.Filter],
    request_rate: Sequence[hcm_pb2.HttpFilter],
) -> listener_pb2.Listener:
    """A plaintext ingress port (OSM's http IngressBackend): plaintext connections from the
    ingress's addresses only, every request to the app. Its address is all the ingress proves, so
    there is no RBAC; mesh callers speak TLS, match no chain and are closed."""
    if not ingress.source_ranges:  # no address yet: an empty range list would match every source
        listener = listener_pb2.Listener(
            name=INBOUND, address=_address(proxy.inbound_address, proxy.inbound_port)
        )
        refuse = _network_filter("envoy.filters.network.direct_response", direct_response_pb2.Config())
        listener.filter_chains.append(listener_components_pb2.FilterChain(filters=[refuse]))
        return listener
    listener = _http_listener(
        INBOUND,
        proxy.inbound_address,
        proxy.inbound_port,
        network_filters=connection_rate,
        http_filters=request_rate,
    )
    listener.listener_filters.append(policy.tls_inspector())
    match = listener.filter_chains[0].filter_chain_match
    match.transport_protocol = "raw_buffer"
    for cidr in ingress.source_ranges:
        network = ipaddress.ip_network(cidr)
        match.source_prefix_ranges.append(
            address_pb2.CidrRange(
                address_prefix=str(network.network_address),
                prefix_len=wrappers_pb2.UInt32Value(value=network.prefixlen),
            )
        )
    return listener


def _served_ports(mesh: MeshState, proxy: Proxy) -> tuple[Port, ...]:
    """The ports of the proxy's service whose endpoints are this sidecar's inbound port (all of them
    while it has no endpoints yet)."""
    svc = mesh.services.get(proxy.service)
    if svc is None:
        return ()
    mine = tuple(
        p for p in svc.ports if any(e.port == proxy.inbound_port for e in svc.endpoints.get(p.port, ()))
    )
    return mine or svc.ports


def _inbound_http_listener(
    mesh: MeshState,
    proxy: Proxy,
    trust_domain: str,
    ingress: IngressRule | None,
    connection_rate: Sequence[listener_components_pb2.Filter],
    request_rate: Sequence[hcm_pb2.HttpFilter],
) -> listener_pb2.Listener:
    """Callers not allowed at all are refused the connection (network RBAC, new connections); every
    request is checked against the caller's routes by the HTTP RBAC filter, whose rules live in the
    inbound route configuration (``_inbound_routes``). A listener change reaches only connections
    opened after it (open ones drain slowly); a route configuration change reaches the next request
    on every connection, so revoking access takes effect at once. Permissive: any caller with a
    mesh certificate. An ingress-only port: its ingress identities alone, whatever the mesh allows."""
    if ingress is not None:
        network = [_callers_only(ingress.sources, trust_domain)]
    elif mesh.permissive:
        network = []
    else:
        callers = [p.caller for p in mesh.allowed_callers(proxy.identity)]
        network = [_callers_only(callers, trust_domain)]
    # Without a route's rules (none is ever missing) the filter allows nothing.
    deny_all = http_rbac_pb2.RBAC(rules=rbac_pb2.RBAC(action=rbac_pb2.RBAC.ALLOW))
    return _http_listener(
        INBOUND,
        proxy.inbound_address,
        proxy.inbound_port,
        network_filters=[*network, *connection_rate],
        http_filters=[_http_filter(HTTP_RBAC, deny_all), *request_rate],
        transport_socket=tls.downstream(),
    )


def _inbound_tcp_listener(
    mesh: MeshState,
    proxy: Proxy,
    ports: set[int],
    trust_domain: str,
    connection_rate: Sequence[listener_components_pb2.Filter],
) -> listener_pb2.Listener:
    """Only callers a TrafficTarget allows on one of these ports through a TCPRoute connect.

    They are told apart in the TLS handshake, which accepts only their certificates, not on the
    connection's first byte as the RBAC filter would: a server that speaks first would otherwise
    answer anyone who connects."""
    tcp = tcp_proxy_pb2.TcpProxy(stat_prefix=INBOUND, cluster=local_cluster_name(proxy.app_port))
    listener = listener_pb2.Listener(
        name=INBOUND, address=_address(proxy.inbound_address, proxy.inbound_port)
    )
    listener.filter_chains.append(_inbound_tcp_chain(mesh, proxy, ports, trust_domain, tcp, connection_rate))
    return listener


def _inbound_tcp_chain(
    mesh: MeshState,
    proxy: Proxy,
    ports: set[int],
    trust_domain: str,
    tcp: tcp_proxy_pb2.TcpProxy,
    connection_rate: Sequence[listener_components_pb2.Filter] = (),
) -> listener_components_pb2.FilterChain:
    if mesh.permissive:
        callers: list[Identity] | None = None  # any mesh certificate
    else:
        callers = list(
            dict.fromkeys(
                p.caller
                for p in mesh.allowed_callers(proxy.identity)
                if any(r.protocol == "tcp" and (not r.ports or ports & set(r.ports)) for r in p.ports)
            )
        )
    if callers == []:  # a listener needs a chain: one that closes every connection without a word
        refuse = _network_filter("envoy.filters.network.direct_response", direct_response_pb2.Config())
        return listener_components_pb2.FilterChain(filters=[refuse])
    return listener_components_pb2.FilterChain(
        filters=[*connection_rate, _network_filter("envoy.filters.network.tcp_proxy", tcp)],
        transport_socket=tls.downstream(callers, trust_domain),
    )


def _pod_ports(mesh: MeshState, pod: Pod) -> dict[int, bool]:
    """The ports the pod serves the mesh on (the target ports of its Services' endpoints at its
    address; while it has none yet, those of every Service of its namespace) -> whether HTTP."""
    mine: dict[int, bool] = {}
    namespace: dict[int, bool] = {}
    for svc in mesh.services.values():
        if svc.ref.namespace != pod.namespace:
            continue
        for port in svc.ports:
            for e in svc.endpoints.get(port.port, ()):
                found = mine if e.address == pod.ip else namespace
                found[e.port] = found.get(e.port, False) or port.is_http
    return mine or namespace


def _pod_services(mesh: MeshState, pod: Pod, port: int) -> list[ServiceRef]:
    """The Services whose endpoints are the pod's ``port`` (its namespace's, while it has none)."""
    mine = [
        svc.ref
        for svc in mesh.services.values()
        if any(e.address == pod.ip and e.port == port for ends in svc.endpoints.values() for e in ends)
    ]
    return mine or sorted(svc.ref for svc in mesh.services.values() if svc.ref.namespace == pod.namespace)


def _transparent_inbound_chains(
    mesh: MeshState,
    proxy: Proxy,
    port: int,
    is_http: bool,
    ingress: IngressRule | None,
    rates: ConnectionLimits | None,
    trust_domain: str,
) -> list[listener_components_pb2.FilterChain]:
    """What a pod receives on a port it serves the mesh: mTLS only (HTTP checked per request as
    ``_inbound_http_listener`` does, TCP in the handshake; an ingress-only port its ingress alone),
    rate limited as a host sidecar is, then on to the app at the address it was sent to."""
    connection_rate = (
        [_network_filter(policy.CONNECTION_RATE_FILTER, policy.connection_rate(rates.connection_rate))]
        if rates and rates.connection_rate
        else []
    )
    request_rate = []
    if rates and rates.request_rate:
        request_rate = [_http_filter(policy.REQUEST_RATE_FILTER, policy.request_rate(rates.request_rate))]
    elif rates and rates.route_rates:
        request_rate = [_http_filter(policy.REQUEST_RATE_FILTER, policy.route_rates_only())]
    name = f"{INBOUND}|{port}"
    routes = name if ingress is not None or rates is not None else INBOUND
    if not is_http:
        tcp = tcp_proxy_pb2.TcpProxy(stat_prefix=name, cluster=INBOUND_PASSTHROUGH)
        chain = _inbound_tcp_chain(mesh, proxy, {port}, trust_domain, tcp, connection_rate)
    elif ingress is not None and not ingress.mtls:
        # A pod's other connections pass through: what the ingress's chain does not take is closed
        # here, plaintext from elsewhere and TLS alike (no backtracking past a more specific match).
        chains = [_refusal(f"{name}|refused", port, "raw_buffer"), _refusal(f"{name}|tls", port, "")]
        if ingress.source_ranges:
            plain = _inbound_plaintext_listener(proxy, ingress, connection_rate, request_rate).filter_chains[
                0
            ]
            _route_config(plain, routes)
            plain.name = name
            plain.filter_chain_match.destination_port.value = port
            chains.insert(0, plain)
        return chains
    else:
        chain = _inbound_http_listener(
            mesh, proxy, trust_domain, ingress, connection_rate, request_rate
        ).filter_chains[0]
        _route_config(chain, routes)
    chain.name = name
    chain.filter_chain_match.destination_port.value = port
    return [chain]


def _refusal(name: str, port: int, transport: str) -> listener_components_pb2.FilterChain:
    """Connections to ``port`` (of ``transport``, or any) closed without a word."""
    refuse = _network_filter("envoy.filters.network.direct_response", direct_response_pb2.Config())
    return listener_components_pb2.FilterChain(
        name=name,
        filter_chain_match=listener_components_pb2.FilterChainMatch(
            destination_port=wrappers_pb2.UInt32Value(value=port), transport_protocol=transport
        ),
        filters=[refuse],
    )


def _route_config(chain: listener_components_pb2.FilterChain, name: str) -> None:
    """Points the chain's HTTP connection manager at the route configuration ``name``."""
    for f in chain.filters:
        if f.typed_config.Is(hcm_pb2.HttpConnectionManager.DESCRIPTOR):
            hcm = hcm_pb2.HttpConnectionManager()
            f.typed_config.Unpack(hcm)
            hcm.rds.route_config_name = name
            f.typed_config.Pack(hcm)


def _transparent_listener(
    name: str,
    port: int,
    chains: Sequence[listener_components_pb2.FilterChain],
    *,
    passthrough: str | None,
    inspect_tls: bool = False,
) -> listener_pb2.Listener:
    """A capture port: the original destination restored (and a TLS server name read, when a
    chain matches on it), then matched against ``chains``; what none matches goes on to that
    destination as it came (through the cluster ``passthrough``), or is closed (None)."""
    original = listener_components_pb2.ListenerFilter(
        name="envoy.filters.listener.original_dst", typed_config=_typed(original_dst_pb2.OriginalDst())
    )
    if passthrough is not None:
        tcp = tcp_proxy_pb2.TcpProxy(stat_prefix=f"{name}|{PASSTHROUGH}", cluster=passthrough)
        default = listener_components_pb2.FilterChain(
            name=PASSTHROUGH, filters=[_network_filter("envoy.filters.network.tcp_proxy", tcp)]
        )
    else:
        refuse = _network_filter("envoy.filters.network.direct_response", direct_response_pb2.Config())
        default = listener_components_pb2.FilterChain(name=f"{name}|refused", filters=[refuse])
    return listener_pb2.Listener(
        name=name,
        address=_address("0.0.0.0", port),
        listener_filters=[original, *([policy.tls_inspector()] if inspect_tls else [])],
        filter_chains=chains,
        default_filter_chain=default,
    )


def _destination(ips: Sequence[str], port: int) -> listener_components_pb2.FilterChainMatch:
    ranges = [
        address_pb2.CidrRange(
            address_prefix=ip, prefix_len=wrappers_pb2.UInt32Value(value=32 if "." in ip else 128)
        )
        for ip in sorted(set(ips), key=ipaddress.ip_address)
    ]
    return listener_components_pb2.FilterChainMatch(
        destination_port=wrappers_pb2.UInt32Value(value=port), prefix_ranges=ranges
    )


def _passthrough(name: str, source: str | None = None) -> cluster_pb2.Cluster:
    """Connections on to their original destination (the proxy's own UID is exempt from capture),
    from ``source`` when given."""
    cluster = cluster_pb2.Cluster(
        name=name,
        type=cluster_pb2.Cluster.ORIGINAL_DST,
        lb_policy=cluster_pb2.Cluster.CLUSTER_PROVIDED,
        connect_timeout=duration_pb2.Duration(seconds=1),
    )
    # A pod's app gets the protocol its caller's sidecar spoke: HTTP/2 on a gRPC port.
    options = http_options_pb2.HttpProtocolOptions(
        use_downstream_protocol_config=http_options_pb2.HttpProtocolOptions.UseDownstreamHttpConfig(
            http_protocol_options=protocol_pb2.Http1ProtocolOptions(),
            http2_protocol_options=protocol_pb2.Http2ProtocolOptions(),
        )
    )
    cluster.typed_extension_protocol_options[HTTP_PROTOCOL_OPTIONS].CopyFrom(_typed(options))
    if source is not None:
        cluster.upstream_bind_config.source_address.CopyFrom(_address(source, 0).socket_address)
    return cluster


def _callers_only(callers: Sequence[Identity], trust_domain: str) -> listener_components_pb2.Filter:
    """A network RBAC filter admitting connections from these identities only."""
    policy = rbac_pb2.Policy(
        permissions=[rbac_pb2.Permission(any=True)],
        principals=[tls.principal(c, trust_domain) for c in dict.fromkeys(callers)] or [_nobody()],
    )
    network = network_rbac_pb2.RBAC(
        stat_prefix="inbound_callers",
        rules=rbac_pb2.RBAC(action=rbac_pb2.RBAC.ALLOW, policies={"callers": policy}),
    )
    return _network_filter("envoy.filters.network.rbac", network)


def _nobody() -> rbac_pb2.Principal:
    return rbac_pb2.Principal(not_id=rbac_pb2.Principal(any=True))


def _nothing() -> rbac_pb2.Permission:
    return rbac_pb2.Permission(not_rule=rbac_pb2.Permission(any=True))


@functools.lru_cache(maxsize=8192)  # every caller of a destination names the same matches
def _permission(m: HttpMatch) -> rbac_pb2.Permission:
    """All of a match's conditions: the path regex (anchored at the start of the path), a method, headers."""
    rules = []
    if m.path_regex:
        path = string_pb2.StringMatcher(safe_regex=_regex(whole_path_regex(m.path_regex)))
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
    mesh: MeshState, svc: Service, port: Port, first: bool, short: bool, routes: ServiceRoutes | None
) -> route_components_pb2.VirtualHost:
    names = [
        f"{svc.ref.name}.{svc.ref.namespace}",
        f"{svc.ref.name}.{svc.ref.namespace}.svc",
        f"{svc.ref.name}.{svc.ref.namespace}.svc.{CLUSTER_DOMAIN}",
    ]
    if short:
        names.insert(0, svc.ref.name)
    # A pod calling the ClusterIP (what the name resolves to) sends it as the Host.
    names += [f"[{ip}]" if ":" in ip else ip for ip in svc.cluster_ips]
    return route_components_pb2.VirtualHost(
        name=cluster_name(svc.ref, port.port),
        domains=[f"{n}:{port.port}" for n in names] + (names if first else []),
        routes=_service_routes(routes)
        if routes is not None
        else _routes(mesh.splits.get((svc.ref, port.port)), cluster_name(svc.ref, port.port)),
    )


def _refusals(policies: Sequence[bytes]) -> list[bytes]:
    """The catch-all of a caller's outbound routes: a request for a mesh service the caller may not
    call is refused (403) by an RBAC policy named after that service (``_refusal_policy``), so that
    the caller's own stats count the refusals per destination
    (``http.outbound.rbac.policy.<namespace>/<name>.denied``); any other host is not found (404), as
    without it. The virtual host is written around ``policies`` in pieces, as the routes' field 2:
    a caller may not call most of a large mesh, and each policy's bytes are shared by every caller
    refused that service, where a whole host would be each caller's own (~110 bytes a service)."""
    rules = [rbac_pb2.RBAC(action=rbac_pb2.RBAC.DENY).SerializeToString(), *policies]
    rbac = [
        *wire.wrapped(_field_number(http_rbac_pb2.RBAC, "rules"), rules),
        # the per-policy counters; only the route's own config turns them on
        http_rbac_pb2.RBAC(track_per_rule_stats=True).SerializeToString(),
    ]
    per_route = wire.wrapped(_field_number(http_rbac_pb2.RBACPerRoute, "rbac"), rbac)
    typed = [
        any_pb2.Any(
            type_url=resources.type_url(http_rbac_pb2.RBACPerRoute.DESCRIPTOR.full_name)
        ).SerializeToString(),
        *wire.wrapped(_field_number(any_pb2.Any, "value"), per_route),
    ]
    entry = [wire.field(1, HTTP_RBAC.encode()), *wire.wrapped(2, typed)]  # a map entry: key 1, value 2
    route = route_components_pb2.Route(match=route_components_pb2.RouteMatch(prefix="/"))
    route.direct_response.status = 404
    host = [
        route_components_pb2.VirtualHost(name=REFUSED, domains=["*"]).SerializeToString(),
        *wire.wrapped(
            _field_number(route_components_pb2.VirtualHost, "routes"),
            [
                route.SerializeToString(),
                *wire.wrapped(_field_number(route_components_pb2.Route, "typed_per_filter_config"), entry),
            ],
        ),
    ]
    return wire.wrapped(_field_number(route_pb2.RouteConfiguration, "virtual_hosts"), host)


def _refusal_policy(svc: Service, namespace: str) -> bytes:
    """The refusals' policy for ``svc`` (its names by Host, any port), as an entry of the RBAC
    ``policies`` map: the serialization of an RBAC holding that one policy."""
    policy = rbac_pb2.Policy(
        permissions=[rbac_pb2.Permission(header=_header(":authority", regex=_host_pattern(svc, namespace)))],
        principals=[rbac_pb2.Principal(any=True)],
    )
    return bytes(rbac_pb2.RBAC(policies={str(svc.ref): policy}).SerializeToString())


def _field_number(kind: type[message.Message], name: str) -> int:
    return int(kind.DESCRIPTOR.fields_by_name[name].number)


def _host_pattern(svc: Service, namespace: str) -> str:
    """The Host of a request for ``svc`` from ``namespace``, any port: the names and ClusterIPs its
    virtual hosts have (``_virtual_host``)."""
    names = [
        literal(f"{svc.ref.name}.{svc.ref.namespace}") + f"(\\.svc(\\.{literal(CLUSTER_DOMAIN)})?)?",
        *(literal(f"[{ip}]" if ":" in ip else ip) for ip in svc.cluster_ips),
    ]
    if svc.ref.namespace == namespace:
        names.insert(0, literal(svc.ref.name))
    return f"({'|'.join(names)})(:[0-9]+)?"


def _service_routes(routes: ServiceRoutes) -> list[route_components_pb2.Route]:
    """A route per rule, in order; a request none matches finds no route, which Envoy answers 404."""
    out = []
    for rule in routes.rules:
        route = route_components_pb2.Route(
            match=_route_match(rule.match),
            request_headers_to_add=_headers_to_add(rule.request_headers),
            request_headers_to_remove=rule.request_headers.remove,
            response_headers_to_add=_headers_to_add(rule.response_headers),
            response_headers_to_remove=rule.response_headers.remove,
        )
        weighted = [b for b in rule.backends if b.weight]
        if rule.redirect is not None:
            route.redirect.CopyFrom(_redirect(rule.redirect, routes.port))
        elif not weighted:
            route.direct_response.status = 500  # what the spec asks of a rule with nowhere to send
        else:
            route.route.weighted_clusters.clusters.extend(
                route_components_pb2.WeightedCluster.ClusterWeight(
                    name=cluster_name(b.service, b.port or routes.port),
                    weight=wrappers_pb2.UInt32Value(value=b.weight),
                )
                for b in weighted
            )
            if rule.timeout_ms is not None:
                route.route.timeout.FromMilliseconds(rule.timeout_ms)
            if rule.rewrite is not None:
                _rewrite(route.route, rule.rewrite)
        out.append(route)
    return out


_REDIRECT_CODES = {
    301: route_components_pb2.RedirectAction.MOVED_PERMANENTLY,
    302: route_components_pb2.RedirectAction.FOUND,
    303: route_components_pb2.RedirectAction.SEE_OTHER,
    307: route_components_pb2.RedirectAction.TEMPORARY_REDIRECT,
    308: route_components_pb2.RedirectAction.PERMANENT_REDIRECT,
}


_SCHEME_PORTS = {"http": 80, "https": 443}


def _redirect(redirect: Redirect, service_port: int) -> route_components_pb2.RedirectAction:
    """The Location's port is the one given, else the new scheme's, else the Service port the
    request was sent to (as a Gateway listener's); a scheme's own port is left out of it."""
    scheme = redirect.scheme or "http"  # a sidecar sees its app's requests in plaintext
    port = redirect.port or (_SCHEME_PORTS.get(scheme, 0) if redirect.scheme else service_port)
    action = route_components_pb2.RedirectAction(
        response_code=_REDIRECT_CODES[redirect.status],
        scheme_redirect=redirect.scheme or "",
        host_redirect=redirect.hostname or "",
        port_redirect=0 if port == _SCHEME_PORTS.get(scheme) else port,
    )
    if redirect.path is not None:
        action.path_redirect = redirect.path
    elif redirect.prefix is not None:
        action.regex_rewrite.CopyFrom(_prefix_rewrite(*redirect.prefix))
    return action


def _rewrite(action: route_components_pb2.RouteAction, rewrite: Rewrite) -> None:
    if rewrite.hostname is not None:
        action.host_rewrite_literal = rewrite.hostname
    if rewrite.path is not None:  # the whole path; Envoy keeps the query string out of it
        action.regex_rewrite.pattern.CopyFrom(_regex("^.*$"))
        action.regex_rewrite.substitution = rewrite.path
    elif rewrite.prefix is not None:
        action.regex_rewrite.CopyFrom(_prefix_rewrite(*rewrite.prefix))


def _prefix_rewrite(prefix: str, replacement: str) -> regex_pb2.RegexMatchAndSubstitute:
    """The path prefix replaced: it matches whole path elements (/old: /old and /old/a, not /older),
    what follows it is kept, and a prefix replaced by / leaves the rest, or / itself."""
    prefix, replacement = prefix.rstrip("/"), replacement.rstrip("/")
    if replacement:
        pattern, substitution = f"^{literal(prefix)}(/.*)?$", replacement + r"\1"
    else:
        pattern, substitution = f"^{literal(prefix)}/?(.*)$", r"/\1"
    return regex_pb2.RegexMatchAndSubstitute(pattern=_regex(pattern), substitution=substitution)


def _headers_to_add(edit: HeaderEdit) -> list[base_pb2.HeaderValueOption]:
    actions = (
        (edit.set, base_pb2.HeaderValueOption.OVERWRITE_IF_EXISTS_OR_ADD),
        (edit.add, base_pb2.HeaderValueOption.APPEND_IF_EXISTS_OR_ADD),
    )
    return [
        base_pb2.HeaderValueOption(header=base_pb2.HeaderValue(key=name, value=value), append_action=action)
        for headers, action in actions
        for name, value in headers
    ]


def _routes(split: Split | None, cluster: str) -> list[route_components_pb2.Route]:
    """Requests go to the service, or by weight to a split's backends; a split with matches takes
    only the requests they match, and the rest go to the root service."""
    everything = route_components_pb2.RouteMatch(prefix="/")
    direct = route_components_pb2.Route(
        match=everything, route=route_components_pb2.RouteAction(cluster=cluster)
    )
    if split is None:
        return [direct]
    weighted = route_components_pb2.RouteAction(
        weighted_clusters=route_components_pb2.WeightedCluster(
            clusters=[
                route_components_pb2.WeightedCluster.ClusterWeight(
                    name=cluster_name(b.service, split.port), weight=wrappers_pb2.UInt32Value(value=b.weight)
                )
                for b in split.backends
            ]
        )
    )
    if not split.http_matches:
        return [route_components_pb2.Route(match=everything, route=weighted)]
    return [route_components_pb2.Route(match=_route_match(m), route=weighted) for m in split.http_matches] + [
        direct
    ]


def _route_match(m: HttpMatch) -> route_components_pb2.RouteMatch:
    match = route_components_pb2.RouteMatch(
        headers=[_header(name, regex=pattern) for name, pattern in m.headers],
        query_parameters=[
            route_components_pb2.QueryParameterMatcher(
                name=name, string_match=string_pb2.StringMatcher(safe_regex=_regex(pattern))
            )
            for name, pattern in m.query
        ],
    )
    if m.path_regex:
        match.safe_regex.CopyFrom(_regex(whole_path_regex(m.path_regex)))
    else:
        match.prefix = "/"
    if m.methods:
        methods = "|".join(re.escape(method) for method in m.methods)
        match.headers.append(_header(":method", regex=f"(?:{methods})"))
    return match


def _inbound_routes(
    mesh: MeshState,
    proxy: Proxy,
    trust_domain: str,
    ingress: IngressRule | None,
    rates: ConnectionLimits | None,
    local_cluster: str = "",
) -> route_pb2.RouteConfiguration:
    """Every request to the local app (``local_cluster``, by default the sidecar's static one),
    checked against the routes each caller is allowed (no rules at all in permissive mode; every
    request of an ingress identity to its port). Paths with request rates of their own have routes
    of their own, each with its bucket."""
    local_cluster = local_cluster or local_cluster_name(proxy.app_port)
    to_app = route_components_pb2.RouteAction(cluster=local_cluster)
    routes = [
        route_components_pb2.Route(
            name=f"rate|{path}",
            match=route_components_pb2.RouteMatch(safe_regex=_regex(whole_path_regex(path))),
            route=to_app,
            typed_per_filter_config={policy.REQUEST_RATE_FILTER: _typed(policy.request_rate(rate))},
        )
        for path, rate in (rates.route_rates if rates else ())
    ]
    routes.append(route_components_pb2.Route(match=route_components_pb2.RouteMatch(prefix="/"), route=to_app))
    if ingress is not None:
        sources = {
            str(s): rbac_pb2.Policy(
                principals=[tls.principal(s, trust_domain)], permissions=[rbac_pb2.Permission(any=True)]
            )
            for s in ingress.sources
        }
        rules = http_rbac_pb2.RBACPerRoute(
            rbac=http_rbac_pb2.RBAC(rules=rbac_pb2.RBAC(action=rbac_pb2.RBAC.ALLOW, policies=sources))
        )
    elif mesh.permissive:
        rules = http_rbac_pb2.RBACPerRoute()  # no rbac: the filter is off for this route
    else:
        per_caller = {
            str(p.caller): rbac_pb2.Policy(
                principals=[tls.principal(p.caller, trust_domain)],
                permissions=[_permission(m) for m in p.http] or [_nothing()],
            )
            for p in mesh.allowed_callers(proxy.identity)
        }
        rules = http_rbac_pb2.RBACPerRoute(
            rbac=http_rbac_pb2.RBAC(rules=rbac_pb2.RBAC(action=rbac_pb2.RBAC.ALLOW, policies=per_caller))
        )
    return route_pb2.RouteConfiguration(
        name=INBOUND,
        virtual_hosts=[
            route_components_pb2.VirtualHost(
                name=local_cluster,
                domains=["*"],
                routes=routes,
                typed_per_filter_config={HTTP_RBAC: _typed(rules)},
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

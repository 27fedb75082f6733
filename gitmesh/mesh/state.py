"""From cluster objects to ``MeshState``: who is who, who may call whom on which routes, where traffic goes.

Pure: objects in (as dicts, any served or older SMI version), a frozen value
out. The xDS translation reads only this value, so everything SMI means is
decided here once:

- identities are ServiceAccounts, written namespace/name;
- access is denied unless a TrafficTarget allows it, or a MeshConfig makes the mesh permissive;
  a rule without ``matches`` allows every route of its HTTPRouteGroup, a
  TCPRoute/UDPRoute without ports allows every port, and a target without rules
  (v1alpha1, v1alpha2) allows every request and connection from its sources;
- a TrafficSplit's weights are relative and apply to every client of its root
  service; a backend that shares no port with the root gets no traffic, and a
  warning says so; the root and backends may be written as DNS names
  (``smi.service_ref``), in the split's own namespace only.
"""

from __future__ import annotations

import functools
from collections import defaultdict
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

from gitmesh import smi
from gitmesh.smi import Identity

SERVICE_NAME_LABEL = "kubernetes.io/service-name"


@dataclass(frozen=True, order=True)
class ServiceRef:
    namespace: str
    name: str

    def __str__(self) -> str:
        return f"{self.namespace}/{self.name}"


@dataclass(frozen=True)
class Port:
    name: str
    port: int
    protocol: str = "TCP"  # TCP, UDP or SCTP, as in the Service
    app_protocol: str = ""  # "http" and friends make the port HTTP; else TCP

    @property
    def is_http(self) -> bool:
        return self.app_protocol.lower() in ("http", "http2", "h2c", "grpc") or self.name.split("-")[0] in (
            "http",
            "http2",
            "grpc",
        )


@dataclass(frozen=True, order=True)
class Endpoint:
    address: str
    port: int


@dataclass(frozen=True)
class Service:
    ref: ServiceRef
    ports: tuple[Port, ...]
    endpoints: Mapping[int, tuple[Endpoint, ...]] = field(default_factory=dict)  # service port -> endpoints


@dataclass(frozen=True)
class Backend:
    service: ServiceRef
    weight: int


@dataclass(frozen=True)
class Split:
    """Traffic for ``root`` on ``port`` goes to ``backends`` by relative weight."""

    root: ServiceRef
    port: int
    backends: tuple[Backend, ...]
    http_matches: tuple[HttpMatch, ...] = ()  # empty: the split applies to every request


@dataclass(frozen=True)
class HttpMatch:
    """One match of an HTTPRouteGroup; every condition given must hold."""

    group: str
    name: str
    path_regex: str | None
    methods: tuple[str, ...]  # empty: any method
    headers: tuple[tuple[str, str], ...]

    def describe(self) -> str:
        """``GET ^/api``: the methods, and the path regex anchored at the start of the path only."""
        text = f"{','.join(self.methods) or '*'} {'^' + self.path_regex if self.path_regex else 'any path'}"
        return text + "".join(f" {name}~{pattern}" for name, pattern in self.headers)

    def __str__(self) -> str:
        return f"{self.group}/{self.name} ({self.describe()})"


@dataclass(frozen=True)
class PortRule:
    """A TCPRoute or UDPRoute a permission names; no ports: every port."""

    protocol: str  # "tcp" or "udp"
    route: str
    ports: tuple[int, ...]

    def __str__(self) -> str:
        ports = "ports " + ",".join(map(str, self.ports)) if self.ports else "any port"
        return f"{self.route} ({self.protocol} {ports})"


# What a TrafficTarget without rules allows: every request (an HTTP match with no condition) and
# every TCP and UDP port.
ALL_TRAFFIC = (
    (HttpMatch("no rules", "*", None, (), ()),),
    (PortRule("tcp", "no rules", ()), PortRule("udp", "no rules", ())),
)


@dataclass(frozen=True)
class Permission:
    """``source`` may call ``destination`` on these HTTP matches and TCP/UDP port rules."""

    source: Identity
    destination: Identity
    http: tuple[HttpMatch, ...] = ()
    ports: tuple[PortRule, ...] = ()

    def routes(self) -> tuple[str, ...]:
        """Each allowed route as people read it: ``group/match (GET /path)``, ``route (tcp ports 5432)``."""
        return tuple(str(r) for r in (*self.http, *self.ports))


@dataclass(frozen=True)
class MeshState:
    services: Mapping[ServiceRef, Service]
    identities: frozenset[Identity]
    splits: Mapping[tuple[ServiceRef, int], Split]
    permissions: tuple[Permission, ...]
    permissive: bool = False
    warnings: tuple[str, ...] = ()

    @functools.cached_property
    def _by_destination(self) -> dict[Identity, tuple[Permission, ...]]:
        grouped: dict[Identity, list[Permission]] = defaultdict(list)
        for p in self.permissions:
            grouped[p.destination].append(p)
        return {identity: tuple(ps) for identity, ps in grouped.items()}

    def allowed_callers(self, destination: Identity) -> tuple[Permission, ...]:
        """The permissions naming ``destination``: asked once per proxy, so indexed once per mesh."""
        return self._by_destination.get(destination, ())


def build(objects: Iterable[Mapping[str, Any]]) -> MeshState:
    by_kind: dict[str, list[dict[str, Any]]] = defaultdict(list)
    for o in objects:
        by_kind[str(o.get("kind"))].append(dict(o))
    warnings: list[str] = []
    services = _services(by_kind["Service"], by_kind["EndpointSlice"])
    identities = frozenset(
        Identity(smi.namespace(sa), sa["metadata"]["name"]) for sa in by_kind["ServiceAccount"]
    )
    groups = {(smi.namespace(g), g["metadata"]["name"]): g for g in by_kind["HTTPRouteGroup"]}
    splits = _splits(by_kind["TrafficSplit"], services, groups, warnings)
    routes = {
        (kind, smi.namespace(r), r["metadata"]["name"]): r for kind in smi.ROUTE_KINDS for r in by_kind[kind]
    }
    permissions = tuple(p for t in by_kind["TrafficTarget"] for p in _permissions(t, routes, warnings))
    permissive = any(smi.permissive(c) for c in by_kind["MeshConfig"])
    return MeshState(services, identities, splits, permissions, permissive, tuple(warnings))


def _services(svcs: list[dict[str, Any]], slices: list[dict[str, Any]]) -> dict[ServiceRef, Service]:
    endpoints: dict[ServiceRef, dict[str, set[Endpoint]]] = defaultdict(lambda: defaultdict(set))
    for s in slices:
        owner = ((s.get("metadata") or {}).get("labels") or {}).get(SERVICE_NAME_LABEL)
        if not owner:
            continue
        ref = ServiceRef(smi.namespace(s), owner)
        for port in s.get("ports") or ():
            for ep in s.get("endpoints") or ():
                if (ep.get("conditions") or {}).get("ready") is False:
                    continue
                for address in ep.get("addresses") or ():
                    endpoints[ref][port.get("name") or ""].add(Endpoint(address, int(port["port"])))
    out = {}
    for svc in svcs:
        ref = ServiceRef(smi.namespace(svc), svc["metadata"]["name"])
        ports = tuple(
            Port(p.get("name") or "", int(p["port"]), p.get("protocol") or "TCP", p.get("appProtocol") or "")
            for p in (svc.get("spec") or {}).get("ports") or ()
        )
        by_name = endpoints.get(ref, {})
        out[ref] = Service(ref, ports, {p.port: tuple(sorted(by_name.get(p.name, ()))) for p in ports})
    return out


def _splits(
    splits: list[dict[str, Any]],
    services: Mapping[ServiceRef, Service],
    groups: Mapping[tuple[str, str], dict[str, Any]],
    warnings: list[str],
) -> dict[tuple[ServiceRef, int], Split]:
    out = {}
    for s in sorted(splits, key=lambda o: (smi.namespace(o), o["metadata"]["name"])):
        ns = smi.namespace(s)
        root_ns, root_name = smi.service_ref(smi.split_service(s), ns)
        root = services.get(ServiceRef(ns, root_name)) if root_ns == ns else None
        if root is None:
            warnings.append(
                f"TrafficSplit {ns}/{s['metadata']['name']}: root service {smi.split_service(s)} not found"
            )
            continue
        matches = tuple(
            _http_match(name, m)
            for name, _ in smi.split_matches(s)
            if (ns, name) in groups
            for m in smi.http_matches(groups[(ns, name)])
        )
        for port in root.ports:
            backends = []
            for b in smi.split_backends(s):
                backend_ns, backend_name = smi.service_ref(b.service, ns)
                backend = services.get(ServiceRef(ns, backend_name)) if backend_ns == ns else None
                if backend is None:
                    warnings.append(
                        f"TrafficSplit {ns}/{s['metadata']['name']}: backend {b.service} not found"
                    )
                elif port.port not in {p.port for p in backend.ports}:
                    warnings.append(
                        f"TrafficSplit {ns}/{s['metadata']['name']}: backend {b.service} has no port "
                        f"{port.port} and gets no traffic on it"
                    )
                else:
                    backends.append(Backend(backend.ref, int(b.weight)))
            if backends and any(b.weight for b in backends):
                out[(root.ref, port.port)] = Split(root.ref, port.port, tuple(backends), matches)
    return out


def _http_match(group: str, m: smi.HttpMatch) -> HttpMatch:
    methods = () if "*" in m.methods else tuple(m.methods)
    return HttpMatch(group, m.name, m.path_regex, methods, m.headers)


def _permissions(
    target: dict[str, Any], routes: Mapping[tuple[str, str, str], dict[str, Any]], warnings: list[str]
) -> list[Permission]:
    ns = smi.namespace(target)
    destination = smi.target_destination(target)
    if smi.allows_all_traffic(target):
        return [Permission(source, destination, *ALL_TRAFFIC) for source in smi.target_sources(target)]
    http: list[HttpMatch] = []
    ports: list[PortRule] = []
    for rule in smi.target_rules(target):
        route = routes.get((rule.kind, ns, rule.name))
        if route is None:
            warnings.append(
                f"TrafficTarget {ns}/{target['metadata']['name']}: {rule.kind} {rule.name} not found"
            )
        elif rule.kind == "HTTPRouteGroup":
            http += [
                _http_match(rule.name, m)
                for m in smi.http_matches(route)
                if rule.matches is None or m.name in rule.matches
            ]
        else:
            ports.append(
                PortRule("tcp" if rule.kind == "TCPRoute" else "udp", rule.name, smi.tcp_ports(route))
            )
    return [
        Permission(source, destination, tuple(http), tuple(ports)) for source in smi.target_sources(target)
    ]

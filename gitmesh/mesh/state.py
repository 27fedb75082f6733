"""The mesh model: who is who, who may call whom on which routes, where traffic goes.

API-neutral frozen values, below every reader: the API readers (``gitmesh.apis``: SMI today) turn
cluster objects into a ``MeshState``, and the xDS translation reads only this value. Nothing here
knows how an API spells a thing, so a second route API is a second reader into the same model.

- an identity is a workload's ServiceAccount, written namespace/name;
- access is denied unless a permission allows it, or the mesh is permissive;
- a split sends traffic for a root service and port to weighted backends, for the requests its
  HTTP matches select (all of them without matches);
- service routes replace that for a service port: an ordered list of rules, the first whose match
  holds takes the request (weighted backends, header edits, a timeout); no rule holds: 404. Routes
  for one caller namespace take that namespace's requests instead of the routes for every caller;
- policies: retries per caller and destination, connection limits per destination, egress rules
  (off unless allowed, or open mesh-wide), ingress-only backend ports, and injected faults.
"""

from __future__ import annotations

import functools
from collections import defaultdict
from collections.abc import Mapping
from dataclasses import dataclass, field

# The largest compiled RE2 program a route pattern may have. Envoy refuses bigger ones (runtime key
# re2.max_program_size.error_level); its default, 100, refuses a UUID pattern ([0-9a-f-]{36} is
# 131), so gitmesh's sidecar bootstrap raises it to this and validation holds patterns to it.
REGEX_MAX_PROGRAM_SIZE = 1000


@dataclass(frozen=True)
class Identity:
    """A workload identity: a ServiceAccount, written ns/name."""

    namespace: str
    name: str

    def __str__(self) -> str:
        return f"{self.namespace}/{self.name}"


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
        return self.app_protocol.lower() in ("http", *_HTTP2_PROTOCOLS) or self.name.split("-")[0] in (
            "http",
            "http2",
            "grpc",
        )

    @property
    def is_http2(self) -> bool:
        """HTTP/2 end to end (gRPC): sidecars speak it to each other and to the app behind them."""
        return self.app_protocol.lower() in _HTTP2_PROTOCOLS or self.name.split("-")[0] in (
            "http2",
            "grpc",
        )


# Kubernetes' own name for HTTP/2 over cleartext (KEP-3726) and the names meshes used before it.
_HTTP2_PROTOCOLS = ("http2", "h2c", "grpc", "kubernetes.io/h2c")


@dataclass(frozen=True, order=True)
class Endpoint:
    address: str
    port: int


@dataclass(frozen=True)
class Service:
    ref: ServiceRef
    ports: tuple[Port, ...]
    endpoints: Mapping[int, tuple[Endpoint, ...]] = field(default_factory=dict)  # service port -> endpoints
    cluster_ips: tuple[str, ...] = ()  # what a pod calls it by once DNS answered (none when headless)


@dataclass(frozen=True)
class Backend:
    service: ServiceRef
    weight: int
    port: int | None = None  # None: the port the traffic was sent to


@dataclass(frozen=True)
class Split:
    """Traffic for ``root`` on ``port`` goes to ``backends`` by relative weight."""

    root: ServiceRef
    port: int
    backends: tuple[Backend, ...]
    http_matches: tuple[HttpMatch, ...] = ()  # empty: the split applies to every request


@dataclass(frozen=True)
class HttpMatch:
    """One named HTTP match of a route group; every condition given must hold.

    ``path_regex`` is anchored at the start of the path only: ``/api`` matches ``/api``,
    ``/api/books`` and ``/apis``; ``/api$`` matches ``/api`` alone. Header values are regexes.
    """

    group: str
    name: str
    path_regex: str | None
    methods: tuple[str, ...]  # empty: any method
    headers: tuple[tuple[str, str], ...]
    query: tuple[tuple[str, str], ...] = ()  # query parameter name and value regex

    def describe(self) -> str:
        """``GET ^/api``: the methods, and the path regex anchored at the start of the path only."""
        text = f"{','.join(self.methods) or '*'} {'^' + self.path_regex if self.path_regex else 'any path'}"
        text += "".join(f" {name}~{pattern}" for name, pattern in self.headers)
        return text + "".join(f" ?{name}~{pattern}" for name, pattern in self.query)

    def __str__(self) -> str:
        return f"{self.group}/{self.name} ({self.describe()})"


def literal(text: str) -> str:
    """``text`` as an RE2 pattern matching it alone (RE2 refuses some of ``re.escape``'s escapes)."""
    return "".join("\\" + c if c in _REGEX_SPECIAL else c for c in text)


_REGEX_SPECIAL = frozenset("\\.+*?()|[]{}^$")


def whole_path_regex(path_regex: str) -> str:
    """The regex the whole request path must match for ``HttpMatch.path_regex`` to match: Envoy
    matches a regex against the whole path (without the query string), hence the trailing ``.*``."""
    return f"(?:{path_regex}).*"


@dataclass(frozen=True)
class HeaderEdit:
    """Headers set (replacing any of that name), added (beside any of that name) and removed."""

    set: tuple[tuple[str, str], ...] = ()
    add: tuple[tuple[str, str], ...] = ()
    remove: tuple[str, ...] = ()


@dataclass(frozen=True)
class Redirect:
    """A redirect answered in place of the request's backends; what is None keeps the request's.

    The path is replaced whole (``path``) or only the part the rule's path prefix matched
    (``prefix``: the prefix and its replacement; ``/old`` by ``/new`` sends ``/old/a`` to ``/new/a``).
    Without a port the Location keeps the request's."""

    status: int = 302
    scheme: str | None = None
    hostname: str | None = None
    port: int | None = None
    path: str | None = None
    prefix: tuple[str, str] | None = None


@dataclass(frozen=True)
class Rewrite:
    """What a rule changes of a request it sends on: the Host, and the path replaced whole or in
    the prefix matched (as a ``Redirect``'s)."""

    hostname: str | None = None
    path: str | None = None
    prefix: tuple[str, str] | None = None


@dataclass(frozen=True)
class RouteRule:
    """Requests matching ``match`` go to ``backends`` by relative weight (none weighted: 500),
    their headers edited, answered within ``timeout_ms`` (0: no limit; None: Envoy's default);
    a rule with a ``redirect`` answers with it and sends nothing on."""

    match: HttpMatch
    backends: tuple[Backend, ...]
    request_headers: HeaderEdit = HeaderEdit()
    response_headers: HeaderEdit = HeaderEdit()
    timeout_ms: int | None = None
    redirect: Redirect | None = None
    rewrite: Rewrite | None = None


@dataclass(frozen=True)
class ServiceRoutes:
    """Requests for ``service`` on ``port`` from ``callers`` (a namespace; None: every caller
    without routes of its own namespace) take the first rule that matches; none matches: 404."""

    service: ServiceRef
    port: int
    callers: str | None
    rules: tuple[RouteRule, ...]


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
    """``caller`` may call ``destination`` on these HTTP matches and TCP/UDP port rules."""

    caller: Identity
    destination: Identity
    http: tuple[HttpMatch, ...] = ()
    ports: tuple[PortRule, ...] = ()

    def routes(self) -> tuple[str, ...]:
        """Each allowed route as people read it: ``group/match (GET /path)``, ``route (tcp ports 5432)``."""
        return tuple(str(r) for r in (*self.http, *self.ports))


@dataclass(frozen=True)
class ResourceChange:
    """One entry of an EnvoyPatch: a resource type, its documented name (None: every one), and the
    change as JSON text in Envoy's proto field names: a merge patch or a JSON patch."""

    index: int  # its place in spec.patches, for diagnostics
    type: str  # Listener, RouteConfiguration or Cluster
    name: str | None
    merge: str | None = None
    json_patch: str | None = None


@dataclass(frozen=True)
class EnvoyPatch:
    """Raw Envoy changes to the proxies selected: by service name, identity name and namespace,
    each left empty to match every proxy."""

    namespace: str
    name: str
    services: frozenset[str]
    identities: frozenset[str]
    namespaces: frozenset[str]
    changes: tuple[ResourceChange, ...]

    def selects(self, service: ServiceRef, identity: Identity) -> bool:
        return (
            (not self.namespaces or service.namespace in self.namespaces)
            and (not self.services or service.name in self.services)
            and (not self.identities or identity.name in self.identities)
        )

    def __str__(self) -> str:
        return f"EnvoyPatch {self.namespace}/{self.name}"


@dataclass(frozen=True)
class RetryPolicy:
    """Requests from ``source`` to ``destination`` are retried on ``retry_on`` (Envoy's conditions,
    comma-separated), at most ``retries`` times after the first attempt."""

    source: Identity
    destination: ServiceRef
    retry_on: str
    retries: int
    per_try_timeout_ms: int
    backoff_base_ms: int

    def __str__(self) -> str:
        return (
            f"{self.source} retries {self.destination} on {self.retry_on} up to {self.retries} times "
            f"({self.per_try_timeout_ms} ms per try)"
        )


@dataclass(frozen=True)
class RateLimit:
    """A token bucket: ``count`` connections or requests every ``seconds``, ``burst`` more at once;
    a limited HTTP request is answered ``status`` with ``headers`` added (name, value)."""

    count: int
    seconds: int
    burst: int = 0
    status: int = 429
    headers: tuple[tuple[str, str], ...] = ()

    def __str__(self) -> str:
        unit = {1: "second", 60: "minute", 3600: "hour"}.get(self.seconds, f"{self.seconds} s")
        return f"{self.count}/{unit}" + (f" (burst {self.burst})" if self.burst else "")


@dataclass(frozen=True)
class ConnectionLimits:
    """Circuit breaking for every caller of ``service`` (None: Envoy's default), and rate limits
    each sidecar of ``service`` enforces on what it receives, on its own (as OSM's local limits)."""

    service: ServiceRef
    max_connections: int | None = None
    connect_timeout_ms: int | None = None
    max_requests: int | None = None
    max_requests_per_connection: int | None = None
    max_pending_requests: int | None = None
    max_retries: int | None = None
    connection_rate: RateLimit | None = None
    request_rate: RateLimit | None = None
    # Request rates of their own for the paths that match a regex (anchored at the start of the
    # path only, as an HttpMatch's), each its own bucket; the first that matches counts.
    route_rates: tuple[tuple[str, RateLimit], ...] = ()

    def __str__(self) -> str:
        limits = [
            f"{name} {value}"
            for name, value in (
                ("connections", self.max_connections),
                ("connect timeout ms", self.connect_timeout_ms),
                ("requests", self.max_requests),
                ("requests per connection", self.max_requests_per_connection),
                ("pending requests", self.max_pending_requests),
                ("retries", self.max_retries),
                ("connections at", self.connection_rate),
                ("requests at", self.request_rate),
                *((f"requests to ^{path} at", rate) for path, rate in self.route_rates),
            )
            if value is not None
        ]
        return f"{self.service} limits {', '.join(limits) or 'nothing'}"


@dataclass(frozen=True)
class EgressRule:
    """``source`` may reach ``host``:``port`` outside the mesh; ``protocol`` says how its sidecar
    tells the destination apart: by the HTTP Host (http), the TLS server name (tls), or, for a pod's
    sidecar, by the address the connection was sent to (tcp: within ``ranges``, CIDRs; none: any
    address; ``host`` is empty). A host ``*.example.com`` stands for every name under that domain.
    HTTP egress with ``http_matches`` is for the requests one of them matches only."""

    source: Identity
    host: str
    port: int
    protocol: str
    http_matches: tuple[HttpMatch, ...] = ()
    ranges: tuple[str, ...] = ()

    @property
    def wildcard(self) -> bool:
        return self.host.startswith("*.")

    def __str__(self) -> str:
        on = f" on {', '.join(map(str, self.http_matches))}" if self.http_matches else ""
        where = self.host or (",".join(self.ranges) if self.ranges else "any address")
        return f"{self.source} may reach {where}:{self.port} ({self.protocol}){on}"


@dataclass(frozen=True)
class IngressRule:
    """Only the ingress may reach ``backend`` on ``port`` (the app's own port): over mTLS when
    ``mtls``, as one of ``sources``; else in plaintext, from an address in ``source_ranges`` (CIDRs).
    Mesh callers of that port are refused."""

    backend: ServiceRef
    port: int
    sources: tuple[Identity, ...]
    mtls: bool
    source_ranges: tuple[str, ...] = ()

    def __str__(self) -> str:
        where = f"{self.backend}:{self.port} is ingress only"
        if self.mtls:
            return f"{where}, from {', '.join(map(str, self.sources))} over mTLS"
        return f"{where}, in plaintext from {', '.join(self.source_ranges) or 'no address yet'}"


@dataclass(frozen=True)
class Fault:
    """A share of the requests to ``destination`` (from ``source`` only, when given) are delayed
    or aborted with ``abort_status``; percents from 0 to 100."""

    destination: ServiceRef
    source: Identity | None
    delay_percent: float = 0.0
    delay_ms: int = 0
    abort_percent: float = 0.0
    abort_status: int = 0

    def __str__(self) -> str:
        parts = []
        if self.delay_percent:
            parts.append(f"delays {self.delay_percent:g}% by {self.delay_ms} ms")
        if self.abort_percent:
            parts.append(f"aborts {self.abort_percent:g}% with {self.abort_status}")
        who = f" from {self.source}" if self.source else ""
        return f"{self.destination}{who}: {' and '.join(parts)}"


@dataclass(frozen=True)
class CertificateSettings:
    """What the mesh's own objects say of workload certificates (OSM's MeshRootCertificate and
    MeshConfig ``spec.certificate``); None where they say nothing. The controller's configuration
    has the last word (``certs.choice.combine``)."""

    provider: str | None = None  # builtin | vault | cert-manager
    vault_address: str | None = None  # protocol://host:port
    vault_role: str | None = None
    issuer: tuple[str, str, str] | None = None  # cert-manager: (group, kind, name)
    namespace: str | None = None  # the MeshRootCertificate's: where cert-manager's requests go
    trust_domain: str | None = None
    lifetime_seconds: float | None = None
    key_bits: int | None = None
    said_by: tuple[str, ...] = ()  # the objects, as Kind namespace/name, for messages


@dataclass(frozen=True)
class MeshState:
    services: Mapping[ServiceRef, Service]
    identities: frozenset[Identity]
    splits: Mapping[tuple[ServiceRef, int], Split]
    permissions: tuple[Permission, ...]
    permissive: bool = False
    warnings: tuple[str, ...] = ()
    patches: tuple[EnvoyPatch, ...] = ()  # in apply order: by namespace, then name
    retries: tuple[RetryPolicy, ...] = ()
    limits: tuple[ConnectionLimits, ...] = ()
    egress: tuple[EgressRule, ...] = ()  # nothing leaves the mesh unless a rule allows it
    ingress: tuple[IngressRule, ...] = ()
    faults: tuple[Fault, ...] = ()
    routes: Mapping[tuple[ServiceRef, int, str | None], ServiceRoutes] = field(default_factory=dict)
    # A pod's connections that no mesh service nor Egress claims pass through (OSM's enableEgress);
    # else they are closed.
    egress_open: bool = False
    certificates: CertificateSettings = CertificateSettings()

    def routes_for(self, service: ServiceRef, port: int, caller_namespace: str) -> ServiceRoutes | None:
        """The routes a caller of ``caller_namespace`` takes to ``service``:``port``, if any."""
        return self.routes.get((service, port, caller_namespace)) or self.routes.get((service, port, None))

    @functools.cached_property
    def _by_destination(self) -> dict[Identity, tuple[Permission, ...]]:
        grouped: dict[Identity, list[Permission]] = defaultdict(list)
        for p in self.permissions:
            grouped[p.destination].append(p)
        return {identity: tuple(ps) for identity, ps in grouped.items()}

    def allowed_callers(self, destination: Identity) -> tuple[Permission, ...]:
        """The permissions naming ``destination``: asked once per proxy, so indexed once per mesh."""
        return self._by_destination.get(destination, ())

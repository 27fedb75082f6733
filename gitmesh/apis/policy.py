"""The policy readers: OSM's Retry, UpstreamTrafficSetting, Egress and IngressBackend, and gitmesh's
FaultInjection, into the mesh model's policy values.

Each reader takes one object and the known Services and gives the values it means and the
``Problem``s it has; a value naming an unknown Service is left out. Two objects saying different
things about the same thing (a caller's retries to one destination, one destination's limits, one
backend port's ingress, one fault) overlap: the first in (namespace, name) order wins, the others
are left out with a GM172 warning.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Callable, Hashable, Iterable, Mapping
from dataclasses import dataclass
from typing import Any

from gitmesh import durations
from gitmesh.apis import core, smi
from gitmesh.apis.problem import Problem
from gitmesh.mesh.state import (
    ConnectionLimits,
    EgressRule,
    Fault,
    HttpMatch,
    Identity,
    IngressRule,
    RateLimit,
    RetryPolicy,
    Service,
    ServiceRef,
)
from gitmesh.objects import Path

OSM_GROUP = "policy.openservicemesh.io"
GITMESH_GROUP = "gitmesh.dev"

PolicyValue = RetryPolicy | ConnectionLimits | EgressRule | IngressRule | Fault

UNIT_SECONDS = {"second": 1, "minute": 60, "hour": 3600}
# The statuses Envoy's local rate limit can answer with (envoy.type.v3.StatusCode, 4xx and 5xx):
# it refuses any other number, so such a status is refused here rather than by the sidecar.
RATE_LIMIT_STATUSES = frozenset(
    [*range(400, 418), 421, 422, 423, 424, 426, 428, 429, 431, *range(500, 509), 510, 511]
)


@dataclass(frozen=True)
class Known:
    """What a policy may name: the mesh's Services, and its HTTPRouteGroups by (namespace, name)."""

    services: Mapping[ServiceRef, Service]
    groups: Mapping[tuple[str, str], Mapping[str, Any]]


@dataclass(frozen=True)
class Read:
    """What one policy object means, and what it gets wrong."""

    values: tuple[PolicyValue, ...]
    problems: tuple[Problem, ...]


def _service(
    ref: ServiceRef, path: Path, services: Mapping[ServiceRef, Service], problems: list[Problem]
) -> bool:
    if ref in services:
        return True
    problems.append(Problem("GM170", path, f"Service {ref} does not exist", missing=ref))
    return False


def _millis(value: Any, path: Path, problems: list[Problem]) -> int | None:
    try:
        return round(durations.seconds(str(value)) * 1000)
    except ValueError as e:
        problems.append(Problem("GM171", path, str(e)))
        return None


def read_retry(obj: Mapping[str, Any], known: Known) -> Read:
    services = known.services
    spec = obj["spec"]
    problems: list[Problem] = []
    source = Identity(spec["source"]["namespace"], spec["source"]["name"])
    policy = spec["retryPolicy"]
    per_try = _millis(policy["perTryTimeout"], ("spec", "retryPolicy", "perTryTimeout"), problems)
    backoff = _millis(
        policy["retryBackoffBaseInterval"], ("spec", "retryPolicy", "retryBackoffBaseInterval"), problems
    )
    values: list[PolicyValue] = []
    for i, d in enumerate(spec["destinations"]):
        ref = ServiceRef(d["namespace"], d["name"])
        if _service(ref, ("spec", "destinations", i), services, problems) and per_try and backoff:
            values.append(RetryPolicy(source, ref, policy["retryOn"], policy["numRetries"], per_try, backoff))
    return Read(tuple(values), tuple(problems))


def _rate(
    limit: Mapping[str, Any] | None, count: str, path: Path, problems: list[Problem]
) -> RateLimit | None:
    """One of OSM's local limits (``count``: connections or requests per unit) as a token bucket."""
    if not limit:
        return None
    status = limit.get("responseStatusCode", 429)
    if status not in RATE_LIMIT_STATUSES:
        message = f"Envoy's local rate limit cannot answer {status}"
        problems.append(Problem("GM173", (*path, "responseStatusCode"), message))
    return RateLimit(
        limit[count],
        UNIT_SECONDS[limit["unit"]],
        limit.get("burst", 0),
        status,
        tuple((h["name"], h["value"]) for h in limit.get("responseHeadersToAdd") or ()),
    )


def read_limits(obj: Mapping[str, Any], known: Known) -> Read:
    services = known.services
    spec = obj["spec"]
    problems: list[Problem] = []
    local = (spec.get("rateLimit") or {}).get("local") or {}
    at: Path = ("spec", "rateLimit", "local")
    connection_rate = _rate(local.get("tcp"), "connections", (*at, "tcp"), problems)
    request_rate = _rate(local.get("http"), "requests", (*at, "http"), problems)
    route_rates = []
    for i, route in enumerate(spec.get("httpRoutes") or ()):
        at = ("spec", "httpRoutes", i, "rateLimit", "local")
        rate = _rate((route.get("rateLimit") or {}).get("local"), "requests", at, problems)
        if rate is not None:  # a route without a limit says nothing
            route_rates.append((route["path"], rate))
    ns, name = smi.service_ref(spec["host"], core.namespace(obj))
    if "." in name:
        problems.append(Problem("GM170", ("spec", "host"), f"host {name!r} names no Service of the mesh"))
        return Read((), tuple(problems))
    ref = ServiceRef(ns, name)
    tcp = (spec.get("connectionSettings") or {}).get("tcp") or {}
    http = (spec.get("connectionSettings") or {}).get("http") or {}
    timeout = None
    if "connectTimeout" in tcp:
        timeout = _millis(
            tcp["connectTimeout"], ("spec", "connectionSettings", "tcp", "connectTimeout"), problems
        )
    if not _service(ref, ("spec", "host"), services, problems) or problems:
        return Read((), tuple(problems))
    if (request_rate or route_rates) and not any(p.is_http for p in services[ref].ports):
        message = f"{ref} has no HTTP port: an HTTP rate limit would limit nothing"
        field = ("spec", "rateLimit", "local", "http") if request_rate else ("spec", "httpRoutes")
        return Read((), (Problem("GM173", field, message),))
    limits = ConnectionLimits(
        ref,
        tcp.get("maxConnections"),
        timeout,
        http.get("maxRequests"),
        http.get("maxRequestsPerConnection"),
        http.get("maxPendingRequests"),
        http.get("maxRetries"),
        connection_rate,
        request_rate,
        tuple(route_rates),
    )
    return Read((limits,), ())


def read_egress(obj: Mapping[str, Any], known: Known) -> Read:
    """HTTP and TLS ports reach the ``hosts`` (a leading ``*.`` for every name under a domain); TCP
    ports reach addresses, those in ``ipAddresses`` or, without, any (as OSM reads them)."""
    spec, services = obj["spec"], known.services
    problems: list[Problem] = []
    ranges: list[str] = []
    for i, cidr in enumerate(spec.get("ipAddresses") or ()):
        try:
            ranges.append(str(ipaddress.ip_network(cidr, strict=False)))
        except ValueError as e:
            problems.append(Problem("GM175", ("spec", "ipAddresses", i), str(e)))
    matches = _egress_matches(obj, known, problems)
    hosts = spec.get("hosts") or []
    sources = [Identity(s["namespace"], s["name"]) for s in spec["sources"]]
    for i, host in enumerate(hosts):
        if "*" in host and not (host.startswith("*.") and "*" not in host[2:] and host[2:]):
            message = f"wildcard host {host!r}: only a leading '*.' (every name under a domain) is carried"
            problems.append(Problem("GM173", ("spec", "hosts", i), message))
        elif mesh := _mesh_service(host, sources, services):
            # Its sidecars already route that name to the mesh: a second route would be refused.
            message = f"{host!r} is Service {mesh} of the mesh: reach it by a TrafficTarget, not by Egress"
            problems.append(Problem("GM173", ("spec", "hosts", i), message))
    protocols = [port["protocol"].lower() for port in spec["ports"]]
    for i, protocol in enumerate(protocols):
        if protocol != "tcp" and not hosts:
            message = (
                f"{protocol} egress is told apart by name: it needs hosts (ipAddresses are for tcp ports)"
            )
            problems.append(Problem("GM173", ("spec", "ports", i), message))
    if ranges and "tcp" not in protocols:
        message = "ipAddresses narrow tcp ports only; http and tls egress is told apart by hosts"
        problems.append(Problem("GM173", ("spec", "ipAddresses"), message))
    if hosts and set(protocols) == {"tcp"}:
        message = "hosts name HTTP Hosts and TLS server names; a tcp port is reached by address (ipAddresses)"
        problems.append(Problem("GM173", ("spec", "hosts"), message))
    tls_ports = [i for i, protocol in enumerate(protocols) if protocol == "tls"]
    if len(tls_ports) > 1:
        message = "TLS egress is told apart by server name only: one tls port per host"
        problems.append(Problem("GM173", ("spec", "ports", tls_ports[1]), message))
    if problems:
        return Read((), tuple(problems))
    values: list[PolicyValue] = []
    for source in sources:
        for p, protocol in zip(spec["ports"], protocols, strict=True):
            if protocol == "tcp":
                values.append(EgressRule(source, "", p["number"], protocol, ranges=tuple(ranges)))
            else:
                values += [
                    EgressRule(source, host, p["number"], protocol, matches if protocol == "http" else ())
                    for host in hosts
                ]
    return Read(tuple(values), ())


def _egress_matches(obj: Mapping[str, Any], known: Known, problems: list[Problem]) -> tuple[HttpMatch, ...]:
    """The HTTP requests an Egress narrows its http ports to: the matches of the HTTPRouteGroups
    (of its own namespace) it names; none named: every request."""
    found: list[HttpMatch] = []
    for i, ref in enumerate(obj["spec"].get("matches") or ()):
        path = ("spec", "matches", i)
        if ref["kind"] != "HTTPRouteGroup":
            message = f"egress matches by {ref['kind']} are not carried by gitmesh yet"
            problems.append(Problem("GM173", (*path, "kind"), message))
            continue
        group = known.groups.get((core.namespace(obj), ref["name"]))
        if group is None:
            message = f"HTTPRouteGroup {core.namespace(obj)}/{ref['name']} does not exist"
            problems.append(Problem("GM170", (*path, "name"), message))
            continue
        found += [m for m, _ in smi.http_matches(dict(group))]
    return tuple(found)


def _mesh_service(
    host: str, sources: list[Identity], services: Mapping[ServiceRef, Service]
) -> ServiceRef | None:
    """The mesh Service ``host`` names as a caller's sidecar resolves it: name (in a source's own
    namespace), name.ns, name.ns.svc or name.ns.svc.cluster.local."""
    name, _, rest = host.partition(".")
    ns, _, suffix = rest.partition(".")
    candidates = [ServiceRef(ns, name)] if ns and suffix in ("", "svc", "svc.cluster.local") else []
    if not rest:
        candidates = [ServiceRef(source.namespace, name) for source in sources]
    return next((ref for ref in candidates if ref in services), None)


def _ranges(
    source: Mapping[str, Any],
    ns: str,
    path: Path,
    services: Mapping[ServiceRef, Service],
    problems: list[Problem],
) -> list[str]:
    """The address ranges a plaintext ingress source stands for: an IPRange's CIDR, or the
    addresses of a Service's endpoints (its ingress controller's pods), each as a /32 or /128."""
    if source["kind"] == "IPRange":
        try:
            return [str(ipaddress.ip_network(source["name"], strict=False))]
        except ValueError as e:
            problems.append(Problem("GM175", (*path, "name"), str(e)))
            return []
    ref = ServiceRef(source.get("namespace") or ns, source["name"])
    if not _service(ref, (*path, "name"), services, problems):
        return []
    addresses = {e.address for ends in services[ref].endpoints.values() for e in ends}
    return [str(ipaddress.ip_network(a)) for a in sorted(addresses)]


def read_ingress(obj: Mapping[str, Any], known: Known) -> Read:
    services = known.services
    """OSM's semantics: over mTLS (https) the ingress proves a ServiceAccount; over plaintext
    (http) it is known only by its address, an IPRange or the endpoints of its Service."""
    spec, ns = obj["spec"], core.namespace(obj)
    problems: list[Problem] = []
    identities: list[Identity] = []
    ranges: list[str] = []
    for i, s in enumerate(spec["sources"]):
        if s["kind"] == "ServiceAccount":
            identities.append(Identity(s.get("namespace") or ns, s["name"]))
        else:
            ranges += _ranges(s, ns, ("spec", "sources", i), services, problems)
    if spec.get("matches"):
        problems.append(Problem("GM173", ("spec", "matches"), "route matches are not carried by gitmesh yet"))
    values: list[PolicyValue] = []
    for i, b in enumerate(spec["backends"]):
        ref = ServiceRef(ns, b["name"])
        path: Path = ("spec", "backends", i)
        mtls = b["port"]["protocol"] == "https"
        if mtls and ranges:
            message = (
                "over mTLS the ingress is known by its ServiceAccount, not its address: use protocol http"
            )
            problems.append(Problem("GM173", (*path, "port", "protocol"), message))
        if not mtls and identities:
            message = "a ServiceAccount is proven only over mTLS: use protocol https"
            problems.append(Problem("GM173", (*path, "port", "protocol"), message))
        for field, value in (b.get("tls") or {}).items():
            if value:  # gitmesh always checks the ingress's mesh certificate, whatever its SNI
                message = (
                    f"tls.{field} is not carried by gitmesh: the ingress's certificate is always checked"
                )
                problems.append(Problem("GM173", (*path, "tls", field), message))
        if _service(ref, (*path, "name"), services, problems):
            values.append(
                IngressRule(ref, b["port"]["number"], tuple(identities), mtls, () if mtls else tuple(ranges))
            )
    return Read(() if problems else tuple(values), tuple(problems))


def read_fault(obj: Mapping[str, Any], known: Known) -> Read:
    services = known.services
    spec = obj["spec"]
    problems: list[Problem] = []
    ns = core.namespace(obj)
    ref = ServiceRef(spec["destination"]["namespace"] or ns, spec["destination"]["name"])
    source = Identity(spec["source"]["namespace"], spec["source"]["name"]) if "source" in spec else None
    delay, abort = spec.get("delay"), spec.get("abort")
    if delay is None and abort is None:
        problems.append(Problem("GM174", ("spec",), "a FaultInjection needs a delay, an abort or both"))
    delay_ms = _millis(delay["duration"], ("spec", "delay", "duration"), problems) if delay else 0
    if not _service(ref, ("spec", "destination"), services, problems) or problems:
        return Read((), tuple(problems))
    fault = Fault(
        ref,
        source,
        float(delay["percent"]) if delay else 0.0,
        delay_ms or 0,
        float(abort["percent"]) if abort else 0.0,
        abort["status"] if abort else 0,
    )
    return Read((fault,), ())


READERS: dict[str, Callable[[Mapping[str, Any], Known], Read]] = {
    "Retry": read_retry,
    "UpstreamTrafficSetting": read_limits,
    "Egress": read_egress,
    "IngressBackend": read_ingress,
    "FaultInjection": read_fault,
}


def overlap_key(value: PolicyValue) -> Hashable | None:
    """What two values may not both say; None: values of this kind add up (HTTP egress rules)."""
    match value:
        case RetryPolicy():
            return ("retry", value.source, value.destination)
        case ConnectionLimits():
            return ("limits", value.service)
        case IngressRule():
            return ("ingress", value.backend, value.port)
        case EgressRule(protocol="tls"):
            return ("tls egress", value.source, value.host)  # one port per server name
        case Fault():
            return ("fault", value.destination, value.source)
    return None


def first_wins(
    reads: Iterable[tuple[Any, Read]],
) -> tuple[list[PolicyValue], list[tuple[Any, PolicyValue, Any]]]:
    """The values kept, in order, and each value left out as (its object, the value, the object
    whose value wins); ``reads`` in (namespace, name) order, each object with what it reads as."""
    kept: list[PolicyValue] = []
    lost: list[tuple[Any, PolicyValue, Any]] = []
    owner: dict[Hashable, Any] = {}
    for obj, read in reads:
        for v in read.values:
            key = overlap_key(v)
            if key is not None and key in owner:
                lost.append((obj, v, owner[key]))
                continue
            if key is not None:
                owner[key] = obj
            kept.append(v)
    return kept, lost

"""Gateway API for mesh (GAMMA): routes whose parent is a Service.

A GAMMA route attaches to a Service (``parentRefs: [{group: "", kind: Service, name, port}]``) and
routes the requests sent to it: the first rule whose match holds takes a request, and a request no
rule matches is answered 404. A route in the Service's namespace (a producer route) is for every
caller; a route in another namespace (a consumer route) is for the callers of that namespace only,
and they no longer see the producer routes. Between routes, matches rank as the HTTPRoute spec
says: an exact path, then the longest prefix, then a method, then the most header matches, then
the most query matches; ties go to the oldest route, then by namespace/name, then by rule order.
A regular-expression path (whose ranking the spec leaves to the implementation) ranks between
exact and prefix paths.

What gitmesh does not serve yet is refused (GM160) rather than dropped.
"""

from __future__ import annotations

import copy
import re
from collections import defaultdict
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from decimal import Decimal
from typing import Any

from gitmesh.apis.core import namespace
from gitmesh.apis.problem import Problem
from gitmesh.mesh.state import (
    Backend,
    HeaderEdit,
    HttpMatch,
    Redirect,
    Rewrite,
    RouteRule,
    Service,
    ServiceRef,
    ServiceRoutes,
    literal,
    whole_path_regex,
)
from gitmesh.objects import Path

GROUP = "gateway.networking.k8s.io"

# A backendRef without a weight has weight 1 (Gateway API v1, HTTPBackendRef.weight).
_DEFAULT_WEIGHT = 1
_HEADER_FILTERS = {
    "RequestHeaderModifier": "requestHeaderModifier",
    "ResponseHeaderModifier": "responseHeaderModifier",
}
_PATH_RANK = {"Exact": 0, "RegularExpression": 1, "PathPrefix": 2}
_DURATION_PART = re.compile(r"([0-9]+)(h|ms|m|s)")
_MS = {"h": 3_600_000, "m": 60_000, "s": 1000, "ms": 1}

RouteKey = tuple[ServiceRef, int, "str | None"]


def is_service(parent: Mapping[str, Any]) -> bool:
    """Whether a parentRef names a Service: its group and kind default to a Gateway's, so a Service
    parent spells out ``group: ""`` (Gateway API v1, ParentReference)."""
    return bool(parent.get("group", GROUP) == "" and parent.get("kind", "Gateway") == "Service")


def service_parents(obj: dict[str, Any]) -> tuple[str, ...]:
    """The names of the Services a route attaches to, as written, in order."""
    return tuple(str(p.get("name", "")) for p in obj.get("spec", {}).get("parentRefs") or () if is_service(p))


def route_shares(obj: dict[str, Any]) -> tuple[str, dict[str, Decimal]]:
    """The Service a route attaches to, and each backend's share in percent of its split rule."""
    parents = service_parents(obj)
    weights = route_weights(obj)
    total = sum(weights.values())
    shares = {n: (Decimal(w) * 100 / total if total else Decimal(0)) for n, w in weights.items()}
    return (parents[0] if parents else ""), shares


def split_rule(obj: Mapping[str, Any]) -> int | None:
    """The index of the rule whose weights are the route's split: the first without ``matches``
    (it takes every request the others leave), else the first; None without rules. A rollout
    walks its weights, and the plan shows their shares."""
    rules = obj.get("spec", {}).get("rules") or []
    return next((i for i, r in enumerate(rules) if not r.get("matches")), 0 if rules else None)


def route_weights(obj: Mapping[str, Any]) -> dict[str, int]:
    """Each backend's weight in the split rule; a backend named twice has the sum of its weights."""
    at = split_rule(obj)
    weights: dict[str, int] = {}
    for ref in obj["spec"]["rules"][at].get("backendRefs") or () if at is not None else ():
        name = str(ref.get("name", ""))
        weights[name] = weights.get(name, 0) + int(ref.get("weight", _DEFAULT_WEIGHT))
    return weights


def with_route_weights(obj: Mapping[str, Any], weights: Mapping[str, int]) -> dict[str, Any]:
    """A copy of a route whose split rule carries ``weights``; a backend only ``weights`` names is
    added on the port of the rule's first backend, and one named twice has its weight on the first."""
    out = copy.deepcopy(dict(obj))
    at = split_rule(out)
    if at is None:
        return out
    refs = out["spec"]["rules"][at].setdefault("backendRefs", [])
    named: set[str] = set()
    for ref in refs:  # a backend named twice takes its weight once, so the shares hold
        ref["weight"] = 0 if ref["name"] in named else weights.get(ref["name"], 0)
        named.add(ref["name"])
    port = {"port": refs[0]["port"]} if refs else {}
    refs += [{"name": n, **port, "weight": w} for n, w in weights.items() if n not in named]
    return out


@dataclass(frozen=True)
class RankedRule:
    """A rule with one match, and its place among every route's rules for the same parent port."""

    key: RouteKey
    rank: tuple[Any, ...]
    rule: RouteRule


@dataclass(frozen=True)
class RouteRead:
    rules: tuple[RankedRule, ...]
    problems: tuple[Problem, ...]


# (route kind, route namespace, Service namespace, Service name or None for all): what
# ReferenceGrants let routes send to across namespaces.
Grants = frozenset[tuple[str, str, str, "str | None"]]


def grants(objects: Iterable[Mapping[str, Any]]) -> Grants:
    """What the ReferenceGrants among ``objects`` allow routes to refer to: Services only."""
    return frozenset(
        (str(f["kind"]), str(f["namespace"]), namespace(g), t.get("name"))
        for g in objects
        for f in g["spec"]["from"]
        if f["group"] == GROUP
        for t in g["spec"]["to"]
        if t["group"] == "" and t["kind"] == "Service"
    )


def read_route(
    obj: dict[str, Any], services: Mapping[ServiceRef, Service], granted: Grants = frozenset()
) -> RouteRead:
    """A schema-valid HTTPRoute's or GRPCRoute's rules, one per match and parent port, and what is
    wrong with it.

    A Service not in ``services`` is a problem naming it in ``Problem.missing`` (the cluster may
    have it); a backend with a problem is left out of its rule. A backend in another namespace needs
    a ReferenceGrant there (``granted``), unless it is a parent of the route: a consumer route sending
    on to the Service it is attached to, as the conformance suite's MeshConsumerRoute does.
    """
    ns = namespace(obj)
    spec = obj["spec"]
    problems = _not_served(obj)
    keys: list[RouteKey] = []
    for i, parent in enumerate(spec["parentRefs"]):
        if not is_service(parent):
            continue  # refused in _not_served
        ref = ServiceRef(str(parent.get("namespace", ns)), str(parent["name"]))
        callers = None if ref.namespace == ns else ns
        svc = services.get(ref)
        if svc is None:
            problems.append(
                Problem("GM161", ("spec", "parentRefs", i, "name"), f"no Service {str(ref)!r}", ref)
            )
            continue
        ports = [p for p in svc.ports if parent.get("port", p.port) == p.port]
        if not ports:
            problems.append(
                Problem(
                    "GM162",
                    ("spec", "parentRefs", i, "port"),
                    f"Service {str(ref)!r} has no port {parent['port']}",
                )
            )
        for port in ports:
            if port.is_http:
                keys.append((ref, port.port, callers))
            elif "port" in parent:
                message = f"port {port.port} of Service {str(ref)!r} is not HTTP (name it http-*)"
                problems.append(Problem("GM162", ("spec", "parentRefs", i, "port"), message))
    ranked: list[RankedRule] = []
    age = (str(obj["metadata"].get("creationTimestamp", "")), ns, str(obj["metadata"]["name"]))
    for r, rule in enumerate(spec["rules"]):
        at: Path = ("spec", "rules", r)
        parents = {k[0] for k in keys}
        backends = _backends(
            rule, at, (str(obj["kind"]), ns), services, granted | _own(obj, parents), problems
        )
        request, response = (_header_edit(rule, kind) for kind in _HEADER_FILTERS)
        timeout = rule.get("timeouts", {}).get("request")  # GRPCRoute has none
        for m, match in enumerate(rule.get("matches") or [{}]):
            name = (f"{ns}/{obj['metadata']['name']}", str(rule.get("name", f"rules[{r}]")))
            http, order = (_grpc_match if obj["kind"] == "GRPCRoute" else _http_match)(name, match)
            # An HTTPRoute's rules come before a GRPCRoute's on the same port: gRPC paths are
            # /package.Service/Method, which a plain HTTP rule rarely means to take.
            rank = (obj["kind"] == "GRPCRoute", *order, *age, r, m)
            routed = RouteRule(
                http,
                backends,
                request,
                response,
                None if timeout is None else duration_ms(timeout),
                _redirect(rule, match),
                _rewrite(rule, match),
            )
            ranked += [RankedRule(key, rank, routed) for key in keys]
    return RouteRead(tuple(ranked), tuple(problems))


def _http_match(name: tuple[str, str], match: Mapping[str, Any]) -> tuple[HttpMatch, tuple[int, ...]]:
    """An HTTPRoute match, and its rank: exact path, longest prefix, method, headers, query."""
    path = match.get("path", {})
    kind, value = path.get("type", "PathPrefix"), str(path.get("value", "/"))
    headers = match.get("headers") or ()
    query = match.get("queryParams") or ()
    rank = (
        _PATH_RANK[kind],
        -len(value.rstrip("/")) if kind == "PathPrefix" else 0,  # /books/ is /books
        0 if "method" in match else 1,
        -len(headers),
        -len(query),
    )
    http = HttpMatch(
        *name,
        _path_regex(kind, value),
        (str(match["method"]),) if "method" in match else (),
        tuple((str(h["name"]).lower(), _value_regex(h)) for h in headers),
        tuple((str(q["name"]), _value_regex(q)) for q in query),
    )
    return http, rank


def _grpc_match(name: tuple[str, str], match: Mapping[str, Any]) -> tuple[HttpMatch, tuple[int, ...]]:
    """A GRPCRoute match as the HTTP/2 path ``/service/method`` it selects, and its rank: the
    longest service, then the longest method, then the most headers (GRPCRoute's precedence)."""
    method = match.get("method", {})
    service, call = str(method.get("service", "")), str(method.get("method", ""))
    if method.get("type", "Exact") == "RegularExpression":
        path = f"/(?:{service or '[^/]+'})/(?:{call or '[^/]+'})$"
    else:
        path = f"/{literal(service) if service else '[^/]+'}/{literal(call) if call else '[^/]+'}$"
    headers = match.get("headers") or ()
    rank = (-len(service), -len(call), -len(headers), 0, 0)
    headers_regex = tuple((str(h["name"]).lower(), _value_regex(h)) for h in headers)
    return HttpMatch(*name, path if method else None, (), headers_regex), rank


def service_routes(rules: Iterable[RankedRule]) -> dict[RouteKey, ServiceRoutes]:
    """Every route's rules gathered per parent port and caller namespace, in precedence order."""
    grouped: dict[RouteKey, list[RankedRule]] = defaultdict(list)
    for r in rules:
        grouped[r.key].append(r)
    return {
        key: ServiceRoutes(key[0], key[1], key[2], tuple(r.rule for r in sorted(found, key=lambda r: r.rank)))
        for key, found in grouped.items()
    }


def duration_ms(text: str) -> int:
    """A Gateway API duration (GEP-2257: ``1h``, ``2m30s``, ``500ms``) in milliseconds."""
    return sum(int(n) * _MS[unit] for n, unit in _DURATION_PART.findall(text))


def regexes(obj: dict[str, Any]) -> list[tuple[Path, str, str]]:
    """Each regular expression the route's matches hold: its path, as written, and as Envoy gets it."""
    out = []
    for r, rule in enumerate(obj["spec"]["rules"]):
        for m, match in enumerate(rule.get("matches") or ()):
            at: Path = ("spec", "rules", r, "matches", m)
            path = match.get("path", {})
            if path.get("type") == "RegularExpression":
                value = str(path.get("value", ""))
                out.append(
                    ((*at, "path", "value"), value, whole_path_regex(_path_regex("RegularExpression", value)))
                )
            method = match.get("method", {})
            if isinstance(method, dict) and method.get("type") == "RegularExpression":  # a GRPCRoute's
                http, _ = _grpc_match(("", ""), match)
                written = f"{method.get('service', '')}/{method.get('method', '')}"
                out.append(((*at, "method"), written, whole_path_regex(str(http.path_regex))))
            for field in ("headers", "queryParams"):
                for i, h in enumerate(match.get(field) or ()):
                    if h.get("type") == "RegularExpression":
                        out.append(((*at, field, i, "value"), str(h["value"]), str(h["value"])))
    return out


def _path_regex(kind: str, value: str) -> str:
    """The path match as a regex anchored at the start of the path (``HttpMatch.path_regex``)."""
    if kind == "Exact":
        return literal(value) + "$"
    if kind == "RegularExpression":
        return f"(?:{value})$"
    # A prefix matches whole path elements: /books matches /books and /books/1, not /bookshelf.
    trimmed = value.rstrip("/")
    return literal(trimmed) + "(?:/|$)" if trimmed else "/"


def _value_regex(match: Mapping[str, Any]) -> str:
    value = str(match["value"])
    return value if match.get("type", "Exact") == "RegularExpression" else literal(value)


def _own(obj: Mapping[str, Any], parents: Iterable[ServiceRef]) -> Grants:
    """What a route may send to in other namespaces without a grant: the Services it attaches to."""
    return frozenset((str(obj["kind"]), namespace(obj), p.namespace, p.name) for p in parents)


def _backends(
    rule: Mapping[str, Any],
    at: Path,
    route: tuple[str, str],
    services: Mapping[ServiceRef, Service],
    granted: Grants,
    problems: list[Problem],
) -> tuple[Backend, ...]:
    kind, ns = route
    found = []
    for b, ref in enumerate(rule.get("backendRefs") or ()):
        path: Path = (*at, "backendRefs", b)
        if ref.get("group", "") != "" or ref.get("kind", "Service") != "Service":
            continue  # refused in _not_served
        service = ServiceRef(str(ref.get("namespace", ns)), str(ref["name"]))
        allowing = {(kind, ns, service.namespace, service.name), (kind, ns, service.namespace, None)}
        if service.namespace != ns and not allowing & granted:
            message = (
                f"Service {str(service)!r} is in another namespace, and no ReferenceGrant there lets "
                f"{kind}s of namespace {ns!r} send to it"
            )
            problems.append(Problem("GM164", (*path, "namespace"), message))
            continue
        svc = services.get(service)
        if svc is None:
            problems.append(Problem("GM161", (*path, "name"), f"no Service {str(service)!r}", service))
            continue
        if ref["port"] not in {p.port for p in svc.ports}:
            problems.append(
                Problem("GM162", (*path, "port"), f"Service {str(service)!r} has no port {ref['port']}")
            )
            continue
        found.append(Backend(service, int(ref.get("weight", _DEFAULT_WEIGHT)), int(ref["port"])))
    return tuple(found)


_FILTER_FIELDS = {"RequestRedirect": "requestRedirect", "URLRewrite": "urlRewrite"}


def _filter(rule: Mapping[str, Any], kind: str) -> dict[str, Any] | None:
    """The rule's filter of ``kind`` (the CRD allows one of each)."""
    found = [f[_FILTER_FIELDS[kind]] for f in rule.get("filters") or () if f["type"] == kind]
    return dict(found[0]) if found else None


def _path_change(
    modifier: Mapping[str, Any], match: Mapping[str, Any]
) -> tuple[str | None, tuple[str, str] | None]:
    """A redirect's or rewrite's path: replaced whole, or the prefix ``match`` has (the CRD allows
    ReplacePrefixMatch only beside one PathPrefix match; without a path that prefix is ``/``)."""
    path = modifier.get("path") or {}
    if path.get("type") == "ReplaceFullPath":
        return str(path.get("replaceFullPath", "/")), None
    if path.get("type") == "ReplacePrefixMatch":
        return None, (str(match.get("path", {}).get("value", "/")), str(path.get("replacePrefixMatch", "/")))
    return None, None


def _redirect(rule: Mapping[str, Any], match: Mapping[str, Any]) -> Redirect | None:
    redirect = _filter(rule, "RequestRedirect")
    if redirect is None:
        return None
    full, prefix = _path_change(redirect, match)
    status = int(redirect.get("statusCode", 302))
    return Redirect(
        status, redirect.get("scheme"), redirect.get("hostname"), redirect.get("port"), full, prefix
    )


def _rewrite(rule: Mapping[str, Any], match: Mapping[str, Any]) -> Rewrite | None:
    rewrite = _filter(rule, "URLRewrite")
    if rewrite is None:
        return None
    return Rewrite(rewrite.get("hostname"), *_path_change(rewrite, match))


def _header_edit(rule: Mapping[str, Any], kind: str) -> HeaderEdit:
    edits = [f[_HEADER_FILTERS[kind]] for f in rule.get("filters") or () if f["type"] == kind]
    return HeaderEdit(
        tuple((str(h["name"]), str(h["value"])) for e in edits for h in e.get("set") or ()),
        tuple((str(h["name"]), str(h["value"])) for e in edits for h in e.get("add") or ()),
        tuple(str(name) for e in edits for name in e.get("remove") or ()),
    )


def _not_served(obj: dict[str, Any]) -> list[Problem]:
    """GM160 for each thing the route says that gitmesh does not carry to Envoy yet."""
    spec = obj["spec"]
    out: list[tuple[Path, str]] = []
    if spec.get("hostnames"):
        out.append((("spec", "hostnames"), "hostnames (a route on a Service takes every request sent to it)"))
    for i, parent in enumerate(spec["parentRefs"]):
        if not is_service(parent):
            kind = f"{parent.get('group', GROUP) or 'core'}/{parent.get('kind', 'Gateway')}"
            where = "kind" if "kind" in parent else "name"
            message = f'a {kind} parent (gitmesh serves routes on Services: group "", kind Service)'
            out.append((("spec", "parentRefs", i, where), message))
        if "sectionName" in parent:
            out.append(
                (("spec", "parentRefs", i, "sectionName"), "sectionName (name the Service port with port)")
            )
    for r, rule in enumerate(spec["rules"]):
        at: Path = ("spec", "rules", r)
        for f, flt in enumerate(rule.get("filters") or ()):
            if flt["type"] not in _HEADER_FILTERS and flt["type"] not in _FILTER_FIELDS:
                out.append(((*at, "filters", f, "type"), f"a {flt['type']} filter"))
        for b, ref in enumerate(rule.get("backendRefs") or ()):
            path: Path = (*at, "backendRefs", b)
            if ref.get("group", "") != "" or ref.get("kind", "Service") != "Service":
                out.append(
                    ((*path, "kind"), f"a {ref.get('kind', 'Service')} backend (gitmesh sends to Services)")
                )
            if ref.get("filters"):
                out.append(((*path, "filters"), "filters on a backend"))
        if "backendRequest" in rule.get("timeouts", {}):
            out.append(((*at, "timeouts", "backendRequest"), "timeouts.backendRequest"))
    return [Problem("GM160", path, f"gitmesh does not serve {what} yet") for path, what in out]

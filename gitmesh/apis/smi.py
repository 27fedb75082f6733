"""The SMI reader: SMI objects, at any version gitmesh reads, into the mesh model.

SMI moved fields between versions (TrafficTarget v1alpha1 keeps destination,
specs and sources at the top level; HTTPRouteGroup before v1alpha3 keeps
matches at the top level; TrafficSplit v1alpha1 weights are quantities).
The field readers hide that, and return each value with the path it was read
from, so callers can point diagnostics at the field as written.

``read_split`` and ``read_target`` are the one place a TrafficSplit's and a
TrafficTarget's rules are checked: validation reports their problems as
diagnostics, and the mesh built from a cluster as warnings. What SMI means:

- a TrafficTarget allows its sources to call its destination on the routes its rules name; a rule
  without ``matches`` allows every match of its HTTPRouteGroup, a TCPRoute/UDPRoute without ports
  allows every port, and a target without rules (v1alpha1, v1alpha2) allows everything;
- a TrafficSplit's weights are relative and apply to every client of its root service; a backend
  that lacks one of the root's ports gets no traffic on it; the root and backends may be written
  as DNS names (``service_ref``), in the split's own namespace only.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass
from decimal import Decimal
from typing import Any

from gitmesh.apis.core import namespace
from gitmesh.apis.problem import Problem
from gitmesh.mesh.state import (
    ALL_TRAFFIC,
    Backend,
    HttpMatch,
    Identity,
    Permission,
    PortRule,
    Service,
    ServiceRef,
    Split,
)
from gitmesh.objects import Path

SPLIT_GROUP = "split.smi-spec.io"
ACCESS_GROUP = "access.smi-spec.io"
SPECS_GROUP = "specs.smi-spec.io"
ROUTE_KINDS = ("HTTPRouteGroup", "TCPRoute", "UDPRoute")


@dataclass(frozen=True)
class WrittenBackend:
    """A split backend as written (the model's ``Backend`` is the resolved one)."""

    service: str
    weight: Decimal
    path: Path


@dataclass(frozen=True)
class Rule:
    kind: str
    name: str
    matches: tuple[str, ...] | None  # None: every match of the route
    path: Path


def version(obj: dict[str, Any]) -> str:
    return str(obj.get("apiVersion", "")).rpartition("/")[2]


def split_service(obj: dict[str, Any]) -> str:
    return str(obj["spec"]["service"])


def service_ref(written: str, namespace: str) -> tuple[str, str]:
    """The (namespace, name) of the Service a split names, in the split's ``namespace``.

    Written as a name or as the DNS name applications use: ``name``, ``name.ns``,
    ``name.ns.svc``, ``name.ns.svc.<cluster domain>`` (``cluster``, ``cluster.local``, ...).
    Anything else with a dot names no Service, and comes back whole for the caller to report.
    """
    name, _, rest = written.partition(".")
    if not rest:
        return namespace, name
    ns, _, tail = rest.partition(".")
    if tail and tail != "svc" and not tail.startswith("svc."):
        return namespace, written
    return ns, name


def split_backends(obj: dict[str, Any]) -> list[WrittenBackend]:
    return [
        WrittenBackend(str(b["service"]), parse_weight(b["weight"]), ("spec", "backends", i))
        for i, b in enumerate(obj["spec"]["backends"])
    ]


def split_matches(obj: dict[str, Any]) -> list[tuple[str, Path]]:
    """Names of the HTTPRouteGroups a split is limited to (v1alpha3 and later)."""
    return [(str(m["name"]), ("spec", "matches", i)) for i, m in enumerate(obj["spec"].get("matches") or [])]


def shares(backends: list[WrittenBackend]) -> dict[str, Decimal]:
    """Each backend's share of the traffic, in percent. Weights are relative."""
    total = sum((b.weight for b in backends), Decimal(0))
    if total == 0:
        return {b.service: Decimal(0) for b in backends}
    return {b.service: b.weight * 100 / total for b in backends}


def split_shares(obj: dict[str, Any]) -> tuple[str, dict[str, Decimal]]:
    """The root service a split names, as written, and each backend's share in percent."""
    return split_service(obj), shares(split_backends(obj))


# A Kubernetes quantity: a number, then a binary suffix, a decimal suffix, or an integer exponent.
_QUANTITY = re.compile(
    r"^([+-]?(?:[0-9]+(?:\.[0-9]*)?|\.[0-9]+))(Ki|Mi|Gi|Ti|Pi|Ei|n|u|m|k|M|G|T|P|E|[eE][+-]?[0-9]+)?$"
)
_SUFFIX = {
    "": Decimal(1),
    "n": Decimal("1e-9"),
    "u": Decimal("1e-6"),
    "m": Decimal("1e-3"),
    "k": Decimal("1e3"),
    "M": Decimal("1e6"),
    "G": Decimal("1e9"),
    "T": Decimal("1e12"),
    "P": Decimal("1e15"),
    "E": Decimal("1e18"),
    "Ki": Decimal(2) ** 10,
    "Mi": Decimal(2) ** 20,
    "Gi": Decimal(2) ** 30,
    "Ti": Decimal(2) ** 40,
    "Pi": Decimal(2) ** 50,
    "Ei": Decimal(2) ** 60,
}


def parse_weight(value: Any) -> Decimal:
    """A weight as a number: an integer, or (v1alpha1) a Kubernetes quantity such as "500m" or "1e3"."""
    if isinstance(value, bool):
        raise ValueError(f"weight {value!r} is not a number")
    if isinstance(value, int | float):
        return Decimal(str(value))
    m = _QUANTITY.match(str(value))
    if not m:
        raise ValueError(f"weight {value!r} is not a number or quantity")
    number, suffix = m.group(1), m.group(2) or ""
    if suffix[:1] in ("e", "E") and len(suffix) > 1:
        return Decimal(number) * Decimal(10) ** int(suffix[1:])
    return Decimal(number) * _SUFFIX[suffix]


def _target_body(obj: dict[str, Any]) -> tuple[dict[str, Any], Path]:
    if version(obj) == "v1alpha1":
        return obj, ()
    return obj.get("spec") or {}, ("spec",)


def target_destination(obj: dict[str, Any]) -> Identity:
    body, _ = _target_body(obj)
    dest = body["destination"]
    return Identity(str(dest.get("namespace") or namespace(obj)), str(dest["name"]))


def target_identities(obj: dict[str, Any]) -> list[tuple[Path, dict[str, Any]]]:
    """The destination and each source as written, with their paths."""
    body, prefix = _target_body(obj)
    found = [((*prefix, "destination"), body.get("destination") or {})]
    found += [((*prefix, "sources", i), s) for i, s in enumerate(body.get("sources") or [])]
    return found


def target_sources(obj: dict[str, Any]) -> list[Identity]:
    """Sources default to the target's namespace when they name none."""
    body, _ = _target_body(obj)
    return [
        Identity(str(s.get("namespace") or namespace(obj)), str(s["name"])) for s in body.get("sources") or []
    ]


def allows_all_traffic(obj: dict[str, Any]) -> bool:
    """A TrafficTarget without rules (v1alpha1 and v1alpha2 may leave them out; the CRDs require only
    the destination) allows every request and connection from its sources to its destination."""
    body, _ = _target_body(obj)
    return ("specs" if version(obj) == "v1alpha1" else "rules") not in body


def target_rules(obj: dict[str, Any]) -> list[Rule]:
    body, prefix = _target_body(obj)
    key = "specs" if version(obj) == "v1alpha1" else "rules"
    rules = []
    for i, r in enumerate(body.get(key) or []):
        matches = r.get("matches")
        rules.append(
            Rule(
                str(r["kind"]),
                str(r["name"]),
                None if matches is None else tuple(map(str, matches)),
                (*prefix, key, i),
            )
        )
    return rules


def http_matches(obj: dict[str, Any]) -> list[tuple[HttpMatch, Path]]:
    """The matches of an HTTPRouteGroup, each with its path; headers in either written form come back
    as (name, regex) pairs, and a method ``*`` as any method."""
    prefix: tuple[str, ...]
    if version(obj) in ("v1alpha1", "v1alpha2"):
        items, prefix = obj.get("matches") or [], ("matches",)
    else:
        items, prefix = (obj.get("spec") or {}).get("matches") or [], ("spec", "matches")
    group = str(obj["metadata"]["name"])
    return [
        (
            HttpMatch(
                group=group,
                name=str(m["name"]),
                path_regex=m.get("pathRegex"),
                methods=() if "*" in (m.get("methods") or ()) else tuple(m.get("methods") or ()),
                headers=tuple(header_pairs(m.get("headers"))),
            ),
            (*prefix, i),
        )
        for i, m in enumerate(items)
    ]


def header_pairs(headers: Any) -> list[tuple[str, str]]:
    """Headers as (name, regex) pairs from the map form ({a: x}) or the list form ([{a: x}])."""
    if not headers:
        return []
    if isinstance(headers, dict):
        return [(str(k), str(v)) for k, v in headers.items()]
    return [(str(k), str(v)) for item in headers for k, v in item.items()]


def tcp_ports(obj: dict[str, Any]) -> tuple[int, ...]:
    """Ports a TCPRoute or UDPRoute matches; empty means every port (before v1alpha4)."""
    matches = (obj.get("spec") or {}).get("matches") or {}
    return tuple(int(p) for p in matches.get("ports") or ())


# A Service name is a DNS-1035 label.
_SERVICE_NAME = re.compile(r"^[a-z]([-a-z0-9]{0,61}[a-z0-9])?$")


def read_split(
    obj: dict[str, Any],
    services: Mapping[ServiceRef, Service],
    groups: Mapping[tuple[str, str], dict[str, Any]],
) -> tuple[tuple[Split, ...], tuple[Problem, ...]]:
    """A TrafficSplit's routes, one per port of its root, and what is wrong with it.

    ``services`` are the Services known (a Service not in it is a problem naming it in
    ``Problem.missing``); ``groups`` the HTTPRouteGroups of the split's namespace and others, by
    (namespace, name).
    """
    ns = namespace(obj)
    problems: list[Problem] = []

    def find(written: str, path: Path, code: str) -> Service | None:
        _, name = service_ref(written, ns)
        ref = ServiceRef(ns, name)
        if ref in services:
            return services[ref]
        if not _SERVICE_NAME.match(name):
            problems.append(Problem(code, path, f"{name!r} is not a Service name, nor a Service's DNS name"))
        else:
            problems.append(Problem(code, path, f"no Service {name!r} in namespace {ns!r}", missing=ref))
        return None

    written_root = split_service(obj)
    root_ns, _ = service_ref(written_root, ns)
    root = None
    if root_ns != ns:
        problems.append(_elsewhere(("spec", "service"), written_root, root_ns, ns))
    else:
        root = find(written_root, ("spec", "service"), "GM101")
    found: list[tuple[WrittenBackend, Service]] = []
    seen: set[str] = set()
    for b in split_backends(obj):
        here = (*b.path, "service")
        backend_ns, name = service_ref(b.service, ns)
        if backend_ns != ns:
            problems.append(_elsewhere(here, b.service, backend_ns, ns))
            continue
        if name in seen:
            problems.append(Problem("GM107", here, f"backend {name!r} is listed more than once"))
        seen.add(name)
        backend = find(b.service, here, "GM102")
        if backend is None or root is None:
            continue
        found.append((b, backend))
        if backend.ref == root.ref:
            continue
        if not _port_protocols(backend) & _port_protocols(root):
            problems.append(
                Problem(
                    "GM103",
                    here,
                    f"Service {name!r} has none of the ports of {root.ref.name!r} "
                    f"({_ports(_port_protocols(root))}); it has {_ports(_port_protocols(backend))}",
                )
            )
            continue
        numbers = {p.port for p in backend.ports}
        problems += [
            Problem("GM114", here, f"backend {b.service} has no port {p.port} and gets no traffic on it")
            for p in root.ports
            if p.port not in numbers
        ]
    backends = split_backends(obj)
    if backends and all(b.weight == 0 for b in backends):
        problems.append(Problem("GM106", ("spec", "backends"), "every backend has weight 0"))
    matches: list[HttpMatch] = []
    for name, path in split_matches(obj):
        if (ns, name) in groups:
            matches += [m for m, _ in http_matches(groups[(ns, name)])]
        else:
            problems.append(
                Problem("GM108", (*path, "name"), f"no HTTPRouteGroup {name!r} in namespace {ns!r}")
            )
    if root is None:
        return (), tuple(problems)
    routes = []
    for port in root.ports:
        weighted = tuple(
            Backend(s.ref, int(b.weight)) for b, s in found if port.port in {p.port for p in s.ports}
        )
        if any(w.weight for w in weighted):
            routes.append(Split(root.ref, port.port, weighted, tuple(matches)))
    return tuple(routes), tuple(problems)


def _elsewhere(path: Path, written: str, service_ns: str, ns: str) -> Problem:
    return Problem(
        "GM109",
        path,
        f"{written!r} names a Service in namespace {service_ns!r}; a split and its services share "
        f"the split's namespace, {ns!r}",
    )


def _port_protocols(service: Service) -> set[tuple[int, str]]:
    return {(p.port, p.protocol) for p in service.ports}


def _ports(ports: set[tuple[int, str]]) -> str:
    return ", ".join(f"{port}/{proto}" for port, proto in sorted(ports, key=str)) or "no ports"


def read_target(
    obj: dict[str, Any], routes: Mapping[tuple[str, str, str], dict[str, Any]]
) -> tuple[tuple[Permission, ...], tuple[Problem, ...]]:
    """What a TrafficTarget allows, and the routes it names that are missing.

    ``routes`` are the HTTPRouteGroups, TCPRoutes and UDPRoutes known, by (kind, namespace, name).
    """
    destination = target_destination(obj)
    sources = target_sources(obj)
    if allows_all_traffic(obj):
        return tuple(Permission(source, destination, *ALL_TRAFFIC) for source in sources), ()
    ns = namespace(obj)
    problems: list[Problem] = []
    http: list[HttpMatch] = []
    ports: list[PortRule] = []
    for rule in target_rules(obj):
        route = routes.get((rule.kind, ns, rule.name))
        if route is None:
            problems.append(
                Problem("GM111", (*rule.path, "name"), f"no {rule.kind} {rule.name!r} in namespace {ns!r}")
            )
        elif rule.kind == "HTTPRouteGroup":
            known = [m for m, _ in http_matches(route)]
            http += [m for m in known if rule.matches is None or m.name in rule.matches]
            names = {m.name for m in known}
            problems += [
                Problem(
                    "GM112",
                    (*rule.path, "matches", i),
                    f"HTTPRouteGroup/{ns}/{rule.name} has no match {name!r} "
                    f"(it has: {', '.join(sorted(names))})",
                )
                for i, name in enumerate(rule.matches or ())
                if name not in names
            ]
        else:
            ports.append(PortRule("tcp" if rule.kind == "TCPRoute" else "udp", rule.name, tcp_ports(route)))
    permissions = tuple(Permission(source, destination, tuple(http), tuple(ports)) for source in sources)
    return permissions, tuple(problems)

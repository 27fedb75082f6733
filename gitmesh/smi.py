"""Version-independent readers for SMI objects.

SMI moved fields between versions (TrafficTarget v1alpha1 keeps destination,
specs and sources at the top level; HTTPRouteGroup before v1alpha3 keeps
matches at the top level; TrafficSplit v1alpha1 weights are quantities).
These readers hide that, and return each value with the path it was read
from, so callers can point diagnostics at the field as written.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from decimal import Decimal
from typing import Any

from gitmesh.objects import Path

SPLIT_GROUP = "split.smi-spec.io"
ACCESS_GROUP = "access.smi-spec.io"
SPECS_GROUP = "specs.smi-spec.io"
CONFIG_GROUP = "config.openservicemesh.io"  # MeshConfig: the mesh-wide settings
GROUPS = frozenset({SPLIT_GROUP, ACCESS_GROUP, SPECS_GROUP, CONFIG_GROUP})
ROUTE_KINDS = ("HTTPRouteGroup", "TCPRoute", "UDPRoute")
# The largest compiled RE2 program a route pattern may have. Envoy refuses bigger ones (runtime key
# re2.max_program_size.error_level); its default, 100, refuses a UUID pattern ([0-9a-f-]{36} is
# 131), so gitmesh's sidecar bootstrap raises it to this and validation holds patterns to it.
REGEX_MAX_PROGRAM_SIZE = 1000


@dataclass(frozen=True)
class Backend:
    service: str
    weight: Decimal
    path: Path


@dataclass(frozen=True)
class Identity:
    """A workload identity: a ServiceAccount, written ns/name."""

    namespace: str
    name: str

    def __str__(self) -> str:
        return f"{self.namespace}/{self.name}"


@dataclass(frozen=True)
class Rule:
    kind: str
    name: str
    matches: tuple[str, ...] | None  # None: every match of the route
    path: Path


@dataclass(frozen=True)
class HttpMatch:
    name: str
    path_regex: str | None
    methods: tuple[str, ...]
    headers: tuple[tuple[str, str], ...]
    path: Path


def whole_path_regex(path_regex: str) -> str:
    """The regex the whole request path must match for ``pathRegex`` to match.

    The SMI text anchors pathRegex at the start of the path only, so ``/api`` matches ``/api``,
    ``/api/books`` and ``/apis``; ``/api$`` matches ``/api`` alone. Envoy matches a regex against
    the whole path (without the query string), hence the trailing ``.*``.
    """
    return f"(?:{path_regex}).*"


def namespace(obj: dict[str, Any]) -> str:
    return str((obj.get("metadata") or {}).get("namespace") or "")


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


def split_backends(obj: dict[str, Any]) -> list[Backend]:
    return [
        Backend(str(b["service"]), parse_weight(b["weight"]), ("spec", "backends", i))
        for i, b in enumerate(obj["spec"]["backends"])
    ]


def split_matches(obj: dict[str, Any]) -> list[tuple[str, Path]]:
    """Names of the HTTPRouteGroups a split is limited to (v1alpha3 and later)."""
    return [(str(m["name"]), ("spec", "matches", i)) for i, m in enumerate(obj["spec"].get("matches") or [])]


def shares(backends: list[Backend]) -> dict[str, Decimal]:
    """Each backend's share of the traffic, in percent. Weights are relative."""
    total = sum((b.weight for b in backends), Decimal(0))
    if total == 0:
        return {b.service: Decimal(0) for b in backends}
    return {b.service: b.weight * 100 / total for b in backends}


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


def http_matches(obj: dict[str, Any]) -> list[HttpMatch]:
    """The matches of an HTTPRouteGroup; headers in either written form come back as (name, regex) pairs."""
    prefix: tuple[str, ...]
    if version(obj) in ("v1alpha1", "v1alpha2"):
        items, prefix = obj.get("matches") or [], ("matches",)
    else:
        items, prefix = (obj.get("spec") or {}).get("matches") or [], ("spec", "matches")
    return [
        HttpMatch(
            name=str(m["name"]),
            path_regex=m.get("pathRegex"),
            methods=tuple(m.get("methods") or ()),
            headers=tuple(header_pairs(m.get("headers"))),
            path=(*prefix, i),
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


# The MeshConfig settings gitmesh acts on, as (section, field) under spec; the rest are accepted as OSM
# writes them and named in a note.
MESH_CONFIG_ACTED_ON = frozenset({("traffic", "enablePermissiveTrafficPolicyMode")})


def permissive(mesh_config: dict[str, Any]) -> bool:
    """Whether a MeshConfig turns TrafficTarget checks off."""
    traffic = (mesh_config.get("spec") or {}).get("traffic") or {}
    return traffic.get("enablePermissiveTrafficPolicyMode") is True

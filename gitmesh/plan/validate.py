"""Validate a revision's manifests: shape (JSON Schema), then meaning (cross-object checks).

Returns every diagnostic at once. Objects that pass become the desired state,
normalised (HTTPRouteGroup headers always in the list form the CRDs serve).
"""

from __future__ import annotations

import json
from collections import defaultdict
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Any, cast

import re2
from jsonschema import exceptions as schema_errors

from gitmesh import smi
from gitmesh.objects import CLUSTER_SCOPED_KINDS, Manifest, ObjectRef
from gitmesh.plan import convert, policy, schema
from gitmesh.plan.diagnostics import Diagnostic, field_path

# Envoy matches routes with RE2, so patterns are checked with RE2: Python's re would accept
# lookarounds and backreferences that Envoy then rejects.
_RE2_OPTIONS = re2.Options()
_RE2_OPTIONS.log_errors = False


@dataclass(frozen=True)
class Validated:
    desired: tuple[Manifest, ...]
    diagnostics: tuple[Diagnostic, ...]

    @property
    def ok(self) -> bool:
        return not any(d.is_error for d in self.diagnostics)

    @property
    def errors(self) -> list[Diagnostic]:
        return [d for d in self.diagnostics if d.is_error]


def validate(manifests: Sequence[Manifest], extra: Iterable[Diagnostic] = ()) -> Validated:
    """Check every manifest; ``extra`` are load diagnostics to report alongside."""
    diagnostics = list(extra)
    shaped: list[Manifest] = []
    for m in manifests:
        problems = _check_shape(m)
        diagnostics.extend(problems)
        if not problems and schema.validator_for(m.obj["apiVersion"], m.obj["kind"]) is not None:
            shaped.append(_normalise(m))
    diagnostics.extend(_duplicates(manifests))
    diagnostics.extend(check_references(shaped))
    diagnostics.extend(_unconvertible(shaped))
    failed = {d.ref for d in diagnostics if d.is_error and d.ref is not None}
    desired = tuple(_served(m) for m in shaped if m.ref not in failed)
    return Validated(desired, tuple(sorted(diagnostics, key=_order)))


def _order(d: Diagnostic) -> tuple[str, int, int, str]:
    return (d.location.file, d.location.line, d.location.column, d.code)


def _check_shape(m: Manifest) -> list[Diagnostic]:
    obj = m.obj
    api_version, kind, meta = obj.get("apiVersion"), obj.get("kind"), obj.get("metadata")
    name = meta.get("name") if isinstance(meta, dict) else None
    missing = [
        f
        for f, v in (("apiVersion", api_version), ("kind", kind), ("metadata.name", name))
        if not isinstance(v, str) or not v
    ]
    if missing:
        return [Diagnostic(m.source, "GM010", f"missing or empty: {', '.join(missing)}")]
    assert isinstance(api_version, str) and isinstance(kind, str) and isinstance(meta, dict)  # checked above
    ref = m.ref
    validator = schema.validator_for(api_version, kind)
    if validator is None:
        return [
            Diagnostic(
                m.source,
                "GM011",
                f"{api_version} {kind} is not a kind gitmesh manages; it will not be applied",
                "apiVersion",
                ref,
            )
        ]
    if kind not in CLUSTER_SCOPED_KINDS and not meta.get("namespace"):
        return [
            Diagnostic(
                m.locate(("metadata",)),
                "GM122",
                f"{kind} {name!r} has no metadata.namespace, and this file defines no single "
                "Namespace to take it from",
                "metadata.namespace",
                ref,
            )
        ]
    if schema.is_valid(api_version, kind, obj):
        return []
    return [_schema_diagnostic(m, ref, e) for e in validator.iter_errors(obj)]


def _schema_diagnostic(m: Manifest, ref: ObjectRef, error: schema_errors.ValidationError) -> Diagnostic:
    if error.context:  # anyOf / oneOf: the alternative that got furthest says the most
        error = schema_errors.best_match(error.context)
    path = tuple(error.absolute_path)
    if error.validator == "additionalProperties":
        # Point at the unknown key itself, not at the object that holds it.
        # An additionalProperties error is about an object, checked against an object schema.
        instance, of = cast(dict[str, Any], error.instance), cast(dict[str, Any], error.schema)
        extra = sorted(set(instance) - set(of.get("properties", {})))
        path = (*path, extra[0]) if extra else path
        message = f"unknown field {extra[0]!r}" if len(extra) == 1 else f"unknown fields {extra}"
    else:
        message = error.message
    return Diagnostic(m.locate(path), "GM020", message, field_path(path), ref)


def _normalise(m: Manifest) -> Manifest:
    """HTTPRouteGroup headers in the map form become the list form; everything else is kept as written."""
    if m.obj["kind"] != "HTTPRouteGroup":
        return m
    matches = smi.http_matches(m.obj)
    if not any(isinstance(_get(m.obj, x.path).get("headers"), dict) for x in matches):
        return m
    obj = json.loads(json.dumps(m.obj))  # a deep copy of JSON data, several times faster than copy.deepcopy
    for x in matches:
        if x.headers:
            _get(obj, x.path)["headers"] = [{name: pattern} for name, pattern in x.headers]
    return Manifest(obj, m.source, m.positions)


def _unconvertible(manifests: Sequence[Manifest]) -> list[Diagnostic]:
    return [
        _at(
            m,
            path,
            "GM130",
            f"{m.obj['apiVersion']} {field_path(path)} cannot be converted to "
            f"{convert.SERVED[m.obj['kind']]}, which has no such field",
        )
        for m in manifests
        for path in convert.lost_fields(m.obj)
    ]


def _served(m: Manifest) -> Manifest:
    if not convert.needs_conversion(m.obj):
        return m
    return Manifest(convert.to_served(m.obj), m.source, m.positions, converted_from=m.obj["apiVersion"])


def _get(obj: Any, path: tuple[str | int, ...]) -> Any:
    for part in path:
        obj = obj[part]
    return obj


def _duplicates(manifests: Sequence[Manifest]) -> list[Diagnostic]:
    first: dict[ObjectRef, Manifest] = {}
    out = []
    for m in manifests:
        meta = m.obj.get("metadata")
        if not isinstance(meta, dict) or not isinstance(meta.get("name"), str):
            continue
        ref = m.ref
        if ref in first:
            out.append(
                Diagnostic(
                    m.source,
                    "GM121",
                    f"{ref} is already defined at {first[ref].source}",
                    "metadata.name",
                    ref,
                )
            )
        else:
            first[ref] = m
    return out


def check_references(manifests: Sequence[Manifest]) -> list[Diagnostic]:
    """The cross-object checks (GM1xx) over schema-valid manifests."""
    by_kind: dict[str, list[Manifest]] = defaultdict(list)
    for m in manifests:
        by_kind[m.obj["kind"]].append(m)
    service_ports = {
        (smi.namespace(s.obj), s.obj["metadata"]["name"]): {
            (p.get("port"), p.get("protocol", "TCP")) for p in (s.obj.get("spec") or {}).get("ports") or ()
        }
        for s in by_kind["Service"]
    }
    routes = {
        kind: {(smi.namespace(r.obj), r.obj["metadata"]["name"]): r for r in by_kind[kind]}
        for kind in smi.ROUTE_KINDS
    }
    out = _check_splits(by_kind["TrafficSplit"], service_ports, routes["HTTPRouteGroup"])
    out += _check_targets(by_kind["TrafficTarget"], routes)
    out += _check_regexes(by_kind["HTTPRouteGroup"])
    configs = by_kind["MeshConfig"]
    out += [
        _at(
            m,
            ("metadata", "name"),
            "GM131",
            f"a second MeshConfig; the first is {configs[0].ref} at {configs[0].source}",
        )
        for m in configs[1:]
    ]
    out += [d for s in by_kind["TrafficSplit"] for d in policy.check(s)]
    return out


def _check_splits(
    splits: list[Manifest],
    service_ports: dict[tuple[str, str], set[tuple[Any, Any]]],
    route_groups: dict[tuple[str, str], Manifest],
) -> list[Diagnostic]:
    out: list[Diagnostic] = []
    roots: dict[tuple[str, str], Manifest] = {}
    for s in splits:
        key = (smi.namespace(s.obj), smi.split_service(s.obj))
        if key in roots:
            out.append(
                _at(
                    s,
                    ("spec", "service"),
                    "GM104",
                    f"service {key[1]!r} is already split by {roots[key].ref} ({roots[key].source})",
                )
            )
        else:
            roots[key] = s
    for s in splits:
        ns, root = smi.namespace(s.obj), smi.split_service(s.obj)
        root_ports = service_ports.get((ns, root))
        if root_ports is None:
            out.append(_at(s, ("spec", "service"), "GM101", f"no Service {root!r} in namespace {ns!r}"))
        backends = smi.split_backends(s.obj)
        seen: set[str] = set()
        for b in backends:
            here = (*b.path, "service")
            if b.service in seen:
                out.append(_at(s, here, "GM107", f"backend {b.service!r} is listed more than once"))
            seen.add(b.service)
            ports = service_ports.get((ns, b.service))
            if ports is None:
                out.append(_at(s, here, "GM102", f"no Service {b.service!r} in namespace {ns!r}"))
            elif root_ports is not None and b.service != root and not ports & root_ports:
                out.append(
                    _at(
                        s,
                        here,
                        "GM103",
                        f"Service {b.service!r} has none of the ports of {root!r} "
                        f"({_ports(root_ports)}); it has {_ports(ports)}",
                    )
                )
            if b.service != root and (ns, b.service) in roots:
                out.append(
                    _at(
                        s, here, "GM105", f"backend {b.service!r} is the root of {roots[(ns, b.service)].ref}"
                    )
                )
        if backends and all(b.weight == 0 for b in backends):
            out.append(_at(s, ("spec", "backends"), "GM106", "every backend has weight 0"))
        for name, path in smi.split_matches(s.obj):
            if (ns, name) not in route_groups:
                out.append(
                    _at(s, (*path, "name"), "GM108", f"no HTTPRouteGroup {name!r} in namespace {ns!r}")
                )
    return out


def _check_targets(
    targets: list[Manifest], routes: dict[str, dict[tuple[str, str], Manifest]]
) -> list[Diagnostic]:
    out = []
    for t in targets:
        ns = smi.namespace(t.obj)
        for rule in smi.target_rules(t.obj):
            route = routes.get(rule.kind, {}).get((ns, rule.name))
            if route is None:
                out.append(
                    _at(t, (*rule.path, "name"), "GM111", f"no {rule.kind} {rule.name!r} in namespace {ns!r}")
                )
                continue
            if rule.kind != "HTTPRouteGroup" or rule.matches is None:
                continue
            known = {x.name for x in smi.http_matches(route.obj)}
            for i, name in enumerate(rule.matches):
                if name not in known:
                    out.append(
                        _at(
                            t,
                            (*rule.path, "matches", i),
                            "GM112",
                            f"{route.ref} has no match {name!r} (it has: {', '.join(sorted(known))})",
                        )
                    )
    return out


def _check_regexes(groups: list[Manifest]) -> list[Diagnostic]:
    out = []
    for g in groups:
        for x in smi.http_matches(g.obj):
            patterns = [((*x.path, "pathRegex"), x.path_regex)] if x.path_regex is not None else []
            patterns += [((*x.path, "headers"), p) for _, p in x.headers]
            for path, pattern in patterns:
                try:
                    size = re2.compile(pattern, _RE2_OPTIONS).programsize
                except re2.error as e:
                    reason = e.args[0].decode() if e.args and isinstance(e.args[0], bytes) else str(e)
                    out.append(_at(g, path, "GM113", f"{pattern[:80]!r}: {reason}"))
                    continue
                if size > smi.REGEX_MAX_PROGRAM_SIZE:
                    out.append(
                        _at(
                            g,
                            path,
                            "GM113",
                            f"{pattern[:80]!r} compiles to an RE2 program of size {size}; "
                            f"gitmesh's sidecars accept at most {smi.REGEX_MAX_PROGRAM_SIZE}",
                        )
                    )
    return out


def _at(m: Manifest, path: tuple[str | int, ...], code: str, message: str) -> Diagnostic:
    return Diagnostic(m.locate(path), code, message, field_path(path), m.ref)


def _ports(ports: set[tuple[Any, Any]]) -> str:
    return ", ".join(f"{port}/{proto}" for port, proto in sorted(ports, key=str)) or "no ports"

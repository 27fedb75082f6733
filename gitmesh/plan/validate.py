"""Validate a revision's manifests: shape (JSON Schema), then meaning (cross-object checks).

Returns every diagnostic at once. Objects that pass become the desired state,
normalised (HTTPRouteGroup headers always in the list form the CRDs serve).
"""

from __future__ import annotations

import dataclasses
import difflib
import json
from collections import defaultdict
from collections.abc import Iterable, Mapping, Sequence
from collections.abc import Set as AbstractSet
from dataclasses import dataclass
from typing import Any, cast

import re2
from jsonschema import exceptions as schema_errors

from gitmesh.apis import core, gateway, osm, smi
from gitmesh.apis import policy as policies
from gitmesh.apis.kinds import BY_NAME, CLUSTER_SCOPED, KINDS, READ_GROUPS
from gitmesh.apis.problem import Problem
from gitmesh.mesh.state import REGEX_MAX_PROGRAM_SIZE, Service, ServiceRef, whole_path_regex
from gitmesh.objects import Manifest, ObjectRef
from gitmesh.plan import convert, policy, schema
from gitmesh.revision.diagnostics import Diagnostic, field_path

# Envoy matches routes with RE2, so patterns are checked with RE2: Python's re would accept
# lookarounds and backreferences that Envoy then rejects.
_RE2_OPTIONS = re2.Options()
_RE2_OPTIONS.log_errors = False


@dataclass(frozen=True)
class Validated:
    desired: tuple[Manifest, ...]
    diagnostics: tuple[Diagnostic, ...]
    declared: frozenset[ObjectRef]  # every object the revision has, valid or not: never pruned
    outside: frozenset[ObjectRef]  # Services named but not defined, not checked: the cluster must have them

    @property
    def ok(self) -> bool:
        return not any(d.is_error for d in self.diagnostics)

    @property
    def errors(self) -> list[Diagnostic]:
        return [d for d in self.diagnostics if d.is_error]


def validate(
    manifests: Sequence[Manifest],
    extra: Iterable[Diagnostic] = (),
    present: AbstractSet[ObjectRef] | None = None,
) -> Validated:
    """Check every manifest; ``extra`` are load diagnostics to report alongside.

    A split may name Services the revision does not define (another team's, a Helm chart's).
    Without ``present`` they are not checked: a warning each, and ``Validated.outside`` lists
    them; ``present`` holds those of them the cluster has, and the others are errors.
    """
    diagnostics = list(extra)
    outside: set[ObjectRef] = set()
    shaped: list[Manifest] = []
    for m in manifests:
        problems = _check_shape(m)
        diagnostics.extend(problems)
        if not problems and schema.validator_for(m.obj["apiVersion"], m.obj["kind"]) is not None:
            shaped.append(_normalise(m))
    diagnostics.extend(_duplicates(manifests))
    diagnostics.extend(check_references(shaped, present, outside))
    diagnostics.extend(_unconvertible(shaped))
    failed = {d.ref for d in diagnostics if d.is_error and d.ref is not None}
    desired = tuple(_served(m) for m in shaped if m.ref not in failed)
    return Validated(
        desired, tuple(sorted(diagnostics, key=_order)), _declared(manifests), frozenset(outside)
    )


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
        return [Diagnostic(m.location, "GM010", f"missing or empty: {', '.join(missing)}")]
    assert isinstance(api_version, str) and isinstance(kind, str) and isinstance(meta, dict)  # checked above
    ref = m.ref
    validator = schema.validator_for(api_version, kind)
    if validator is None:
        return [_not_read(m, api_version, kind)]
    problems = []
    if kind not in CLUSTER_SCOPED and not meta.get("namespace"):
        problems.append(
            Diagnostic(
                m.locate(("metadata",)),
                "GM122",
                f"{kind} {name!r} has no metadata.namespace, and this file defines no single "
                "Namespace to take it from",
                "metadata.namespace",
                ref,
            )
        )
    if schema.is_valid(api_version, kind, obj):
        return problems
    return problems + [_schema_diagnostic(m, ref, e) for e in validator.iter_errors(obj)]


def _not_read(m: Manifest, api_version: str, kind: str) -> Diagnostic:
    """An object gitmesh has no schema for. A kind gitmesh reads, at another version or without its
    group, and any other kind of an API group gitmesh reads, are errors: left out of the revision,
    the live object would be pruned. Anything else is not gitmesh's business."""
    group = api_version.rpartition("/")[0]
    read = schema.versions_read(kind)
    here = m.locate(("apiVersion",))
    if group in read or (read and not group):
        versions = "; ".join(
            f"{g}/{', '.join(v.rpartition('/')[2] for v in vs)}" if g else ", ".join(vs)
            for g, vs in read.items()
        )
        missing = " (the API group is missing)" if read.keys() - {""} and not group else ""
        return Diagnostic(
            here,
            "GM012",
            f"gitmesh reads {kind} at {versions}, not at {api_version}{missing}; the revision is "
            "refused rather than the object left out of it and pruned",
            "apiVersion",
            m.ref,
        )
    if group in READ_GROUPS:
        near = difflib.get_close_matches(kind, [k.name for k in KINDS if k.group == group], n=1)
        advice = _UNREAD_ADVICE.get(kind, f"; did you mean {near[0]}?" if near else "")
        return Diagnostic(
            here, "GM013", f"{api_version} {kind} is not read by gitmesh{advice}", "apiVersion", m.ref
        )
    return Diagnostic(
        m.location,
        "GM011",
        f"{api_version} {kind} is not a kind gitmesh manages; it will not be applied",
        "apiVersion",
        m.ref,
    )


_UNREAD_ADVICE = {
    "IdentityBinding": ": gitmesh identities are ServiceAccounts; name the ServiceAccount in the "
    "TrafficTarget (kind: ServiceAccount)",
}


def _declared(manifests: Sequence[Manifest]) -> frozenset[ObjectRef]:
    """The identity of every object the revision declares, whatever its version or its problems.

    A kind written without its API group (``apiVersion: v1`` on a MeshConfig) is taken to mean
    the group gitmesh reads the kind in, so that prune still recognises it.
    """
    out = set()
    for m in manifests:
        meta, kind = m.obj.get("metadata"), m.obj.get("kind")
        if not isinstance(meta, dict) or not isinstance(meta.get("name"), str) or not isinstance(kind, str):
            continue
        ref = m.ref
        out.add(ref)
        if not ref.group:
            out.update(dataclasses.replace(ref, group=g) for g in schema.versions_read(kind))
    return frozenset(out)


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
    if not any(isinstance(_get(m.obj, at).get("headers"), dict) for _, at in matches):
        return m
    obj = json.loads(json.dumps(m.obj))  # a deep copy of JSON data, several times faster than copy.deepcopy
    for x, at in matches:
        if x.headers:
            _get(obj, at)["headers"] = [{name: pattern} for name, pattern in x.headers]
    return Manifest(obj, m.location, m.positions)


def _unconvertible(manifests: Sequence[Manifest]) -> list[Diagnostic]:
    return [
        _at(
            m,
            path,
            "GM130",
            f"{m.obj['apiVersion']} {field_path(path)} cannot be converted to "
            f"{BY_NAME[m.obj['kind']].api_version}, which has no such field",
        )
        for m in manifests
        for path in convert.lost_fields(m.obj)
    ]


def _served(m: Manifest) -> Manifest:
    if not convert.needs_conversion(m.obj):
        return m
    return Manifest(
        convert.to_served(m.obj), m.location, m.positions, converted_from=m.obj["apiVersion"], written=m.obj
    )


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
                    m.location,
                    "GM121",
                    f"{ref} is already defined at {first[ref].location}",
                    "metadata.name",
                    ref,
                )
            )
        else:
            first[ref] = m
    return out


def check_references(
    manifests: Sequence[Manifest], present: AbstractSet[ObjectRef] | None, outside: set[ObjectRef]
) -> list[Diagnostic]:
    """The cross-object checks (GM1xx) over schema-valid manifests; Services named but neither
    defined nor looked up (``present`` is None) are added to ``outside``."""
    by_kind: dict[str, list[Manifest]] = defaultdict(list)
    for m in manifests:
        by_kind[m.obj["kind"]].append(m)
    services = core.services(s.obj for s in by_kind["Service"])
    routes = {
        (kind, core.namespace(r.obj), r.obj["metadata"]["name"]): r.obj
        for kind in smi.ROUTE_KINDS
        for r in by_kind[kind]
    }
    groups = {(ns, name): r for (kind, ns, name), r in routes.items() if kind == "HTTPRouteGroup"}
    out = _check_splits(by_kind["TrafficSplit"], services, groups, present, outside)
    out += _check_targets(by_kind["TrafficTarget"], routes)
    out += _check_regexes(by_kind["HTTPRouteGroup"])
    out += _check_route_rate_regexes(by_kind["UpstreamTrafficSetting"])
    configs = by_kind["MeshConfig"]
    out += [
        _at(
            m,
            ("metadata", "name"),
            "GM131",
            f"a second MeshConfig; the first is {configs[0].ref} at {configs[0].location}",
        )
        for m in configs[1:]
    ]
    roots = by_kind["MeshRootCertificate"]
    out += [
        _at(
            m,
            ("metadata", "name"),
            "GM133",
            f"a second MeshRootCertificate; the first is {roots[0].ref} at {roots[0].location}",
        )
        for m in roots[1:]
    ]
    out += [d for m in by_kind["MeshConfig"] for d in _settings_not_acted_on(m)]
    gateway_routes = [*by_kind["HTTPRoute"], *by_kind["GRPCRoute"]]
    out += [d for s in (*by_kind["TrafficSplit"], *gateway_routes) for d in policy.check(s)]
    out += _check_policies(by_kind, policies.Known(services, groups), present, outside)
    granted = gateway.grants(g.obj for g in by_kind["ReferenceGrant"])
    out += _check_gateway_routes(gateway_routes, by_kind["TrafficSplit"], services, granted, present, outside)
    return out


def _check_gateway_routes(
    routes: list[Manifest],
    splits: list[Manifest],
    services: Mapping[ServiceRef, Service],
    granted: gateway.Grants,
    present: AbstractSet[ObjectRef] | None,
    outside: set[ObjectRef],
) -> list[Diagnostic]:
    """Each route's own problems (``gateway.read_route``), its regexes as Envoy gets them, and a
    Service routed by a TrafficSplit too (GM163, naming the split)."""
    out: list[Diagnostic] = []
    split_roots = {
        ServiceRef(*smi.service_ref(smi.split_service(s.obj), core.namespace(s.obj))): s for s in splits
    }
    for m in routes:
        read = gateway.read_route(m.obj, services, granted)
        out += [d for p in read.problems if (d := _outside(m, p, present, outside)) is not None]
        ns = core.namespace(m.obj)
        for i, parent in enumerate(m.obj["spec"]["parentRefs"]):
            split = split_roots.get(ServiceRef(str(parent.get("namespace", ns)), str(parent["name"])))
            if split is not None and gateway.is_service(parent):
                message = f"Service {parent['name']!r} is split by {split.ref} ({split.location}) too"
                out.append(_at(m, ("spec", "parentRefs", i, "name"), "GM163", message))
        for path, pattern, sent in gateway.regexes(m.obj):
            if (d := _check_regex(m, path, pattern, sent)) is not None:
                out.append(d)
    return out


def _check_policies(
    by_kind: Mapping[str, list[Manifest]],
    known: policies.Known,
    present: AbstractSet[ObjectRef] | None,
    outside: set[ObjectRef],
) -> list[Diagnostic]:
    """Each policy's own problems (``gitmesh.apis.policy``), then the overlaps between policies
    (GM172, a warning naming the one that wins). A Service only the cluster has counts as present:
    its policy is checked as if the revision defined it."""
    out: list[Diagnostic] = []
    reads = []
    for kind, reader in policies.READERS.items():
        for m in sorted(by_kind[kind], key=lambda m: (core.namespace(m.obj), m.obj["metadata"]["name"])):
            read = reader(m.obj, known)
            out += [d for p in read.problems if (d := _outside(m, p, present, outside)) is not None]
            reads.append((m, read))
    _, lost = policies.first_wins(reads)
    for m, value, winner in lost:
        message = f"{value} overlaps {winner.ref} ({winner.location}), which wins; this one is left out"
        out.append(_at(m, ("spec",), "GM172", message))
    return out


def _check_splits(
    splits: list[Manifest],
    services: Mapping[ServiceRef, Service],
    groups: Mapping[tuple[str, str], dict[str, Any]],
    present: AbstractSet[ObjectRef] | None,
    outside: set[ObjectRef],
) -> list[Diagnostic]:
    """Each split's own rules (``smi.read_split``), then those between splits: one split per root,
    and no backend that is another split's root."""
    out: list[Diagnostic] = []
    roots: dict[tuple[str, str], Manifest] = {}
    for s in splits:
        key = smi.service_ref(smi.split_service(s.obj), core.namespace(s.obj))
        if key in roots:
            out.append(
                _at(
                    s,
                    ("spec", "service"),
                    "GM104",
                    f"service {key[1]!r} is already split by {roots[key].ref} ({roots[key].location})",
                )
            )
        else:
            roots[key] = s
    for s in splits:
        _, problems = smi.read_split(s.obj, services, groups)
        out += [d for p in problems if (d := _outside(s, p, present, outside)) is not None]
        ns = core.namespace(s.obj)
        _, root = smi.service_ref(smi.split_service(s.obj), ns)
        for b in smi.split_backends(s.obj):
            backend_ns, name = smi.service_ref(b.service, ns)
            if backend_ns == ns and name != root and (ns, name) in roots:
                message = f"backend {name!r} is the root of {roots[(ns, name)].ref}"
                out.append(_at(s, (*b.path, "service"), "GM105", message))
    return out


def _outside(
    split: Manifest, p: Problem, present: AbstractSet[ObjectRef] | None, outside: set[ObjectRef]
) -> Diagnostic | None:
    """A problem as a diagnostic; a Service the revision does not define may be the cluster's:
    unchecked without a cluster (GM110), fine if the cluster has it."""
    if p.missing is None:
        return _at(split, p.path, p.code, p.message)
    ref = ObjectRef("", "Service", p.missing.namespace, p.missing.name)
    if present is None:
        outside.add(ref)
        message = (
            f"Service {ref.name!r} (namespace {ref.namespace!r}) is not in the revision; not checked "
            "without a cluster: plan and apply look for it there"
        )
        return _at(split, p.path, "GM110", message)
    if ref in present:
        return None
    return _at(split, p.path, p.code, f"{p.message}, in the revision or the cluster")


def _check_targets(
    targets: list[Manifest], routes: Mapping[tuple[str, str, str], dict[str, Any]]
) -> list[Diagnostic]:
    out = []
    for t in targets:
        if smi.allows_all_traffic(t.obj) and smi.version(t.obj) not in ("v1alpha1", "v1alpha2"):
            # The served version holds rule-less targets converted from older ones; written, it needs rules.
            out.append(
                _at(
                    t,
                    ("spec",),
                    "GM020",
                    f"'rules' is a required property in {t.obj['apiVersion']} (only v1alpha1 and "
                    "v1alpha2 TrafficTargets may leave it out)",
                )
            )
        out += [
            _at(
                t,
                (*path, "kind"),
                "GM013",
                f"{field_path(path)} is an IdentityBinding{_UNREAD_ADVICE['IdentityBinding']}",
            )
            for path, identity in smi.target_identities(t.obj)
            if identity.get("kind") == "IdentityBinding"
        ]
        _, problems = smi.read_target(t.obj, routes)
        out += [_at(t, p.path, p.code, p.message) for p in problems]
    return out


def _settings_not_acted_on(m: Manifest) -> list[Diagnostic]:
    """One note naming every MeshConfig setting written that gitmesh accepts but does not act on."""
    spec = m.obj.get("spec") or {}
    ignored = [
        f"{section}.{key}"
        for section, fields in spec.items()
        for key in fields
        if (section, key) not in osm.MESH_CONFIG_ACTED_ON
    ]
    if not ignored:
        return []
    acted = ", ".join(sorted(f"spec.{s}.{k}" for s, k in osm.MESH_CONFIG_ACTED_ON))
    return [
        _at(
            m,
            ("spec",),
            "GM132",
            f"gitmesh acts on {acted} only; accepted, not acted on: {', '.join(ignored)}",
        )
    ]


def _check_regexes(groups: list[Manifest]) -> list[Diagnostic]:
    out = []
    for g in groups:
        for x, at in smi.http_matches(g.obj):
            # Each pattern is checked as Envoy is given it.
            patterns = (
                [((*at, "pathRegex"), x.path_regex, whole_path_regex(x.path_regex))]
                if x.path_regex is not None
                else []
            )
            patterns += [((*at, "headers"), p, p) for _, p in x.headers]
            out += [d for path, pattern, sent in patterns if (d := _check_regex(g, path, pattern, sent))]
    return out


def _check_route_rate_regexes(settings: list[Manifest]) -> list[Diagnostic]:
    """An UpstreamTrafficSetting's httpRoutes paths, sent as an HTTPRouteGroup's pathRegex is."""
    return [
        d
        for m in settings
        for i, route in enumerate((m.obj.get("spec") or {}).get("httpRoutes") or ())
        if isinstance(route.get("path"), str)
        and (
            d := _check_regex(
                m, ("spec", "httpRoutes", i, "path"), route["path"], whole_path_regex(route["path"])
            )
        )
    ]


def _check_regex(m: Manifest, path: tuple[str | int, ...], pattern: str, sent: str) -> Diagnostic | None:
    """``pattern`` as Envoy is given it (``sent``): RE2, within the sidecars' program size."""
    try:
        size = re2.compile(sent, _RE2_OPTIONS).programsize
    except re2.error as e:
        reason = e.args[0].decode() if e.args and isinstance(e.args[0], bytes) else str(e)
        return _at(m, path, "GM113", f"{pattern[:80]!r}: {reason}")
    if size > REGEX_MAX_PROGRAM_SIZE:
        message = (
            f"{pattern[:80]!r} compiles to an RE2 program of size {size}; "
            f"gitmesh's sidecars accept at most {REGEX_MAX_PROGRAM_SIZE}"
        )
        return _at(m, path, "GM113", message)
    return None


def _at(m: Manifest, path: tuple[str | int, ...], code: str, message: str) -> Diagnostic:
    return Diagnostic(m.locate(path), code, message, field_path(path), m.ref)

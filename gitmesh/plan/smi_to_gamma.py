"""SMI traffic splits as Gateway API routes on Services (GAMMA): what ``gitmesh convert
smi-to-gamma`` writes.

A TrafficSplit becomes one HTTPRoute per HTTP port of its root Service, attached to that port, so
the Envoy routes served for the route are those served for the split:

- a split without matches: one rule taking every request, with the split's weighted backends;
- a split with HTTPRouteGroup matches: a rule per match (one Gateway match per method, the path
  regex as a RegularExpression matching the whole path, as gitmesh reads ``pathRegex``: anchored
  at the start only), then a rule sending the rest to the root Service itself, as the split does;
- the split's rollout annotations carry over.

What a route cannot say is left as it is and named in the notes: TCP ports (GAMMA routes HTTP and
gRPC). Access stays with TrafficTarget and its HTTPRouteGroups, which are not converted.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any

from gitmesh.apis import core, gateway, read, smi
from gitmesh.mesh.state import HttpMatch, Split, whole_path_regex
from gitmesh.plan.policy import PREFIX


@dataclass(frozen=True)
class Conversion:
    routes: tuple[dict[str, Any], ...]
    notes: tuple[str, ...]


def convert(objects: Iterable[Mapping[str, Any]]) -> Conversion:
    """HTTPRoutes for every TrafficSplit among ``objects`` (schema-valid, as validation leaves them)."""
    objs = list(objects)
    mesh = read.mesh(objs)
    routes, notes = [], [f"{w} (left out)" for w in mesh.warnings]
    for split in sorted((o for o in objs if o.get("kind") == "TrafficSplit"), key=_name):
        ns = core.namespace(split)
        root = smi.service_ref(smi.split_service(dict(split)), ns)
        svc = next((s for ref, s in mesh.services.items() if (ref.namespace, ref.name) == root), None)
        if svc is None:
            notes.append(
                f"TrafficSplit {_name(split)}: its root Service is not among the manifests; not converted"
            )
            continue
        http = [p.port for p in svc.ports if p.is_http]
        for p in svc.ports:
            if not p.is_http:
                message = f"port {p.port} is not HTTP, and GAMMA routes only HTTP and gRPC: not converted"
                notes.append(f"TrafficSplit {_name(split)}: {message}")
        for port in http:
            found = mesh.splits.get((svc.ref, port))
            if found is not None:
                name = split["metadata"]["name"] + ("" if len(http) == 1 else f"-{port}")
                routes.append(_route(split, name, found))
    return Conversion(tuple(routes), tuple(notes))


def _route(split: Mapping[str, Any], name: str, found: Split) -> dict[str, Any]:
    backends = [{"name": b.service.name, "port": found.port, "weight": b.weight} for b in found.backends]
    if found.http_matches:
        rules: list[dict[str, Any]] = [
            {"name": _rule_name(m), "matches": _matches(m), "backendRefs": backends}
            for m in found.http_matches
        ]
        rules.append({"backendRefs": [{"name": found.root.name, "port": found.port}]})
    else:
        rules = [{"backendRefs": backends}]
    annotations = {
        k: v for k, v in (split["metadata"].get("annotations") or {}).items() if str(k).startswith(PREFIX)
    }
    metadata: dict[str, Any] = {"name": name, "namespace": found.root.namespace}
    if annotations:
        metadata["annotations"] = annotations
    return {
        "apiVersion": f"{gateway.GROUP}/v1",
        "kind": "HTTPRoute",
        "metadata": metadata,
        "spec": {
            "parentRefs": [{"group": "", "kind": "Service", "name": found.root.name, "port": found.port}],
            "rules": rules,
        },
    }


def _matches(m: HttpMatch) -> list[dict[str, Any]]:
    """One Gateway match per method (one without a method for any)."""
    base: dict[str, Any] = {}
    if m.path_regex:
        base["path"] = {"type": "RegularExpression", "value": whole_path_regex(m.path_regex)}
    if m.headers:
        base["headers"] = [{"type": "RegularExpression", "name": n, "value": v} for n, v in m.headers]
    return [{**base, "method": method} for method in m.methods] or [base]


def _rule_name(m: HttpMatch) -> str:
    """The rule named for its HTTPRouteGroup match, spelt as a rule name must be (a DNS label)."""
    return re.sub(r"[^a-z0-9]+", "-", f"{m.group}-{m.name}".lower()).strip("-")[:63]


def _name(obj: Mapping[str, Any]) -> str:
    return f"{core.namespace(obj)}/{obj['metadata']['name']}"

"""From cluster objects to the mesh model, through each API's reader.

Pure: objects in (as dicts, any version gitmesh reads), a frozen ``MeshState`` out. What an object
gets wrong, the mesh says as a warning and leaves out; validation refuses the same problems
before they reach a cluster.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Iterable, Mapping
from typing import Any

from gitmesh.apis import core, envoy, gateway, osm, policy, smi
from gitmesh.mesh.state import (
    ConnectionLimits,
    EgressRule,
    Fault,
    IngressRule,
    MeshState,
    Permission,
    RetryPolicy,
    ServiceRef,
    Split,
)


def mesh(objects: Iterable[Mapping[str, Any]]) -> MeshState:
    by_kind: dict[str, list[dict[str, Any]]] = defaultdict(list)
    for o in objects:
        by_kind[str(o.get("kind"))].append(dict(o))
    warnings: list[str] = []
    services = core.services(by_kind["Service"], by_kind["EndpointSlice"])
    groups = {(core.namespace(g), g["metadata"]["name"]): g for g in by_kind["HTTPRouteGroup"]}
    splits: dict[tuple[ServiceRef, int], Split] = {}
    for s in sorted(by_kind["TrafficSplit"], key=lambda o: (core.namespace(o), o["metadata"]["name"])):
        routes, problems = smi.read_split(s, services, groups)
        warnings += [_warning(s, p.message) for p in problems]
        splits |= {(r.root, r.port): r for r in routes}
    ranked: list[gateway.RankedRule] = []
    granted = gateway.grants(by_kind["ReferenceGrant"])
    for h in sorted(
        (*by_kind["HTTPRoute"], *by_kind["GRPCRoute"]),
        key=lambda o: (core.namespace(o), o["metadata"]["name"]),
    ):
        routed = gateway.read_route(h, services, granted)
        warnings += [_warning(h, p.message) for p in routed.problems]
        ranked += routed.rules
    routes_by_ref = {
        (kind, core.namespace(r), r["metadata"]["name"]): r for kind in smi.ROUTE_KINDS for r in by_kind[kind]
    }
    permissions: list[Permission] = []
    for t in by_kind["TrafficTarget"]:
        allowed, problems = smi.read_target(t, routes_by_ref)
        permissions += allowed
        warnings += [_warning(t, p.message) for p in problems]
    reads = []
    for kind, reader in policy.READERS.items():
        for o in sorted(by_kind[kind], key=lambda o: (core.namespace(o), o["metadata"]["name"])):
            read = reader(o, policy.Known(services, groups))
            warnings += [_warning(o, p.message) for p in read.problems]
            reads.append((o, read))
    kept, lost = policy.first_wins(reads)
    warnings += [_warning(o, f"{v} is left out: {_name(winner)} wins") for o, v, winner in lost]
    return MeshState(
        services,
        core.identities(by_kind["ServiceAccount"]),
        splits,
        tuple(permissions),
        any(osm.permissive(c) for c in by_kind["MeshConfig"]),
        tuple(warnings),
        tuple(
            envoy.read_patch(p)
            for p in sorted(by_kind["EnvoyPatch"], key=lambda o: (core.namespace(o), o["metadata"]["name"]))
        ),
        tuple(v for v in kept if isinstance(v, RetryPolicy)),
        tuple(v for v in kept if isinstance(v, ConnectionLimits)),
        tuple(v for v in kept if isinstance(v, EgressRule)),
        tuple(v for v in kept if isinstance(v, IngressRule)),
        tuple(v for v in kept if isinstance(v, Fault)),
        gateway.service_routes(ranked),
        any(osm.egress_open(c) for c in by_kind["MeshConfig"]),
        certificates=osm.certificate_settings(by_kind["MeshConfig"], by_kind["MeshRootCertificate"]),
    )


def _name(obj: Mapping[str, Any]) -> str:
    return f"{obj['kind']} {core.namespace(obj)}/{obj['metadata']['name']}"


def _warning(obj: Mapping[str, Any], message: str) -> str:
    return f"{_name(obj)}: {message}"

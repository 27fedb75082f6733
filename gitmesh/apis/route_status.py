"""Route status: what gitmesh says of each HTTPRoute and GRPCRoute on each Service it attaches to.

Pure. Gateway API has the implementation of a route's parent write, per parent, whether it took the
route (``Accepted``) and whether every backend it names resolved (``ResolvedRefs``), each with one of
the spec's reasons. gitmesh is the implementation of every Service parent (GAMMA); entries of other
controllers (a Gateway's) are theirs, kept as they are. A route refused by a GM16x check is not
Accepted, with that reason, rather than missing from the status.
"""

from __future__ import annotations

import copy
from collections import defaultdict
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any

from gitmesh.apis import core, gateway
from gitmesh.apis.problem import Problem
from gitmesh.mesh.state import Service, ServiceRef
from gitmesh.objects import ObjectRef

# gitmesh's name in ``status.parents[].controllerName``: the entries it writes and may replace.
CONTROLLER_NAME = "gitmesh.dev/mesh-controller"
ROUTE_KINDS = ("HTTPRoute", "GRPCRoute")

ACCEPTED, RESOLVED_REFS = "Accepted", "ResolvedRefs"


@dataclass(frozen=True)
class Condition:
    type: str
    status: bool
    reason: str
    message: str


@dataclass(frozen=True)
class ParentStatus:
    """The route's status on one Service parent: its parentRef as written, and the two conditions."""

    parent_ref: Mapping[str, Any]
    accepted: Condition
    resolved: Condition

    def parent(self, namespace: str) -> str:
        return parent_name(self.parent_ref, namespace)


def parent_name(parent_ref: Mapping[str, Any], namespace: str) -> str:
    """A Service parent as people read it: ``ns/name``, and ``:port`` when the route names one
    (``namespace``: the route's, where the parentRef names none)."""
    port = f":{parent_ref['port']}" if "port" in parent_ref else ""
    return f"{parent_ref.get('namespace', namespace)}/{parent_ref['name']}{port}"


def parent_statuses(
    route: Mapping[str, Any], services: Mapping[ServiceRef, Service], granted: gateway.Grants = frozenset()
) -> tuple[ParentStatus, ...]:
    """The status of a schema-valid route on each of its Service parents, in the order written."""
    obj = dict(route)
    parents = list(enumerate((obj.get("spec") or {}).get("parentRefs") or ()))
    if not any(gateway.is_service(p) for _, p in parents):
        return ()
    read = gateway.read_route(obj, services, granted)
    attached = {r.key[0] for r in read.rules}
    own: dict[int, list[Problem]] = defaultdict(list)  # problems of one parent
    refused: list[Problem] = []  # what the route says that gitmesh does not serve: every parent's
    unresolved: list[tuple[str, Problem]] = []
    for p in read.problems:
        if p.path[:2] == ("spec", "parentRefs"):
            own[int(p.path[2])].append(p)
        elif "backendRefs" in p.path and (p.code != "GM160" or p.path[-1] == "kind"):
            unresolved.append((_backend_reason(p), p))
        else:
            refused.append(p)
    resolved = (
        Condition(RESOLVED_REFS, False, unresolved[0][0], _messages(p for _, p in unresolved))
        if unresolved
        else Condition(RESOLVED_REFS, True, RESOLVED_REFS, "every backend resolved")
    )
    ns = core.namespace(obj)
    out = []
    for i, parent in parents:
        if not gateway.is_service(parent):
            continue  # a Gateway's: its own controller writes that entry
        mine = own.get(i, [])
        ref = ServiceRef(str(parent.get("namespace", ns)), str(parent["name"]))
        if mine:
            reason = "UnsupportedValue" if all(p.code == "GM160" for p in mine) else "NoMatchingParent"
            accepted = Condition(ACCEPTED, False, reason, _messages(mine))
        elif refused:
            accepted = Condition(ACCEPTED, False, "UnsupportedValue", _messages(refused))
        elif ref not in attached and obj["spec"].get("rules"):
            message = f"Service {str(ref)!r} has no HTTP port (name it http-*, or set its appProtocol)"
            accepted = Condition(ACCEPTED, False, "NoMatchingParent", message)
        else:
            accepted = Condition(ACCEPTED, True, ACCEPTED, f"routes requests sent to Service {str(ref)!r}")
        out.append(ParentStatus(parent, accepted, resolved))
    return tuple(out)


def _backend_reason(p: Problem) -> str:
    if p.code == "GM164":
        return "RefNotPermitted"
    if p.code == "GM160":
        return "InvalidKind"
    return "BackendNotFound"  # GM161 (no such Service) and GM162 (no such port)


def _messages(problems: Iterable[Problem]) -> str:
    return "; ".join(f"{p.code} {'.'.join(map(str, p.path))}: {p.message}" for p in problems)


def status(route: Mapping[str, Any], parents: Iterable[ParentStatus], now: str) -> dict[str, Any]:
    """The route's whole status with gitmesh's entries as ``parents`` says: other controllers'
    entries as they are, a condition's ``lastTransitionTime`` kept while its status holds (``now``
    otherwise), ``observedGeneration`` the route's generation where the store keeps one."""
    live = copy.deepcopy((route.get("status") or {}).get("parents") or [])
    others = [e for e in live if e.get("controllerName") != CONTROLLER_NAME]
    before = {
        (_key(e["parentRef"]), c["type"]): c
        for e in live
        if e.get("controllerName") == CONTROLLER_NAME
        for c in e.get("conditions") or ()
    }
    generation = (route.get("metadata") or {}).get("generation")
    ours = []
    for p in parents:
        conditions = []
        for c in (p.accepted, p.resolved):
            was = before.get((_key(p.parent_ref), c.type))
            status = "True" if c.status else "False"
            kept = was is not None and was.get("status") == status
            condition = {
                "type": c.type,
                "status": status,
                "reason": c.reason,
                "message": c.message,
                "lastTransitionTime": was["lastTransitionTime"] if kept and was else now,
            }
            if generation is not None:
                condition["observedGeneration"] = int(generation)
            conditions.append(condition)
        ours.append(
            {
                "parentRef": copy.deepcopy(dict(p.parent_ref)),
                "controllerName": CONTROLLER_NAME,
                "conditions": conditions,
            }
        )
    return {**(route.get("status") or {}), "parents": others + ours}


def differs(route: Mapping[str, Any], parents: Iterable[ParentStatus]) -> bool:
    """Whether gitmesh's entries in the route's status say otherwise than ``parents``: another parent,
    or a condition's status or reason (messages and times aside)."""

    def said(entries: Iterable[Mapping[str, Any]]) -> set[tuple[str, str, str, str]]:
        return {
            (_key(e["parentRef"]), str(c["type"]), str(c["status"]), str(c["reason"]))
            for e in entries
            if e.get("controllerName") == CONTROLLER_NAME
            for c in e.get("conditions") or ()
        }

    live = (route.get("status") or {}).get("parents") or ()
    return said(live) != said(status(route, parents, "")["parents"])


def _key(parent_ref: Mapping[str, Any]) -> str:
    return repr(sorted(parent_ref.items()))


def _same(a: Mapping[str, Any], b: Mapping[str, Any]) -> bool:
    """Equal but for when conditions last changed (which ``status`` keeps when nothing else did)."""

    def strip(s: Mapping[str, Any]) -> list[Any]:
        return [
            {
                **e,
                "conditions": [
                    {k: v for k, v in c.items() if k != "lastTransitionTime"}
                    for c in e.get("conditions") or ()
                ],
            }
            for e in s.get("parents") or ()
        ]

    return strip(a) == strip(b)


def missing(objects: Iterable[Mapping[str, Any]]) -> set[ServiceRef]:
    """The Services the routes among ``objects`` name that are not among them (another team's, in the
    cluster): looked up before ``changed`` is asked, so that they do not read as missing."""
    listed = list(objects)
    services = core.services(o for o in listed if o.get("kind") == "Service")
    return {
        p.missing
        for o in listed
        if o.get("kind") in ROUTE_KINDS and (o.get("spec") or {}).get("parentRefs")
        for p in gateway.read_route(dict(o), services).problems
        if p.missing is not None
    }


def routes(objects: Iterable[Mapping[str, Any]]) -> list[tuple[Mapping[str, Any], tuple[ParentStatus, ...]]]:
    """Each route among ``objects`` with its status on each Service parent, read with the Services,
    EndpointSlices and ReferenceGrants among them."""
    by_kind: dict[str, list[Mapping[str, Any]]] = defaultdict(list)
    for o in objects:
        by_kind[str(o.get("kind"))].append(o)
    services = core.services(by_kind["Service"], by_kind["EndpointSlice"])
    granted = gateway.grants(by_kind["ReferenceGrant"])
    return [(r, parent_statuses(r, services, granted)) for kind in ROUTE_KINDS for r in by_kind[kind]]


def changed(objects: Iterable[Mapping[str, Any]], now: str) -> dict[ObjectRef, dict[str, Any]]:
    """For each route among ``objects`` whose status is not what gitmesh would write now, the status
    to write (see ``routes``)."""
    out = {}
    for route, parents in routes(objects):
        live = (route.get("status") or {}).get("parents") or ()
        if not parents and not any(e.get("controllerName") == CONTROLLER_NAME for e in live):
            continue  # no Service parent now, and none before
        wanted = status(route, parents, now)
        if not _same(wanted, route.get("status") or {}):
            out[ObjectRef.of(route)] = wanted
    return out

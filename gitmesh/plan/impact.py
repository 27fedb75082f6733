"""What a plan does to traffic, from what the objects mean to the mesh rather than from the text.

Splits: each backend's share of the root service before and after.
Policies: the effects (retries, connection limits, egress, ingress-only ports, faults, and egress
open to every pod by the MeshConfig) that appear or go, over the mesh's Services and policies
before and after, when a policy or the MeshConfig changed.
Access: the (caller, destination, route) triples that appear or disappear,
computed over the whole mesh before and after, so a change to a route group
shows up on every TrafficTarget that uses it. A MeshConfig turning permissive
mode on or off is one triple: every caller, every destination, every route.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from decimal import Decimal
from typing import Any

from gitmesh.apis import osm, read
from gitmesh.apis.kinds import BY_NAME, Meaning, with_meaning
from gitmesh.objects import ObjectRef
from gitmesh.plan.model import AccessChange, Action, BackendShare, Change, Impact, PolicyChange, SplitShift

_ACCESS_KINDS = with_meaning(Meaning.ACCESS, Meaning.ROUTE)
_SETTINGS_KINDS = with_meaning(Meaning.SETTINGS)
_POLICY_KINDS = with_meaning(Meaning.POLICY)
# The MeshConfig's enableEgress is a policy effect too: every pod may go out.
_POLICY_INPUT_KINDS = _POLICY_KINDS | _SETTINGS_KINDS | {"Service"}
EGRESS_OPEN = "every pod may reach what no Egress names (MeshConfig enableEgress)"
PERMISSIVE = ("*", "*", "every route (permissive mode)")


def compute(changes: Sequence[Change], live: Mapping[ObjectRef, Mapping[str, Any]]) -> Impact:
    moved = [c for c in changes if c.action is not Action.NOOP]
    splits = tuple(s for c in moved if (s := split_shift(c, live)))
    access: tuple[AccessChange, ...] = ()
    # Rules name routes in their TrafficTarget's own namespace, so only namespaces where an
    # access object changed can gain or lose access.
    touched = {c.ref.namespace for c in moved if c.ref.kind in _ACCESS_KINDS}
    if touched:
        before = [o for r, o in live.items() if r.kind in _ACCESS_KINDS and r.namespace in touched]
        after_by_ref = {r: o for r, o in live.items() if r.kind in _ACCESS_KINDS and r.namespace in touched}
        for c in moved:
            if c.ref.kind not in _ACCESS_KINDS:
                continue
            if c.after is None:
                after_by_ref.pop(c.ref, None)
            else:
                after_by_ref[c.ref] = c.after
        old, new = access_triples(before), access_triples(after_by_ref.values())
        access = tuple(
            sorted(
                [AccessChange(*t, gained=True) for t in new - old]
                + [AccessChange(*t, gained=False) for t in old - new]
            )
        )
    return Impact(splits, access + _permissive_change(moved, live), _policy_changes(moved, live))


def _policy_changes(
    moved: Sequence[Change], live: Mapping[ObjectRef, Mapping[str, Any]]
) -> tuple[PolicyChange, ...]:
    if not any(c.ref.kind in _POLICY_KINDS | _SETTINGS_KINDS for c in moved):
        return ()
    before = {r: o for r, o in live.items() if r.kind in _POLICY_INPUT_KINDS}
    after = dict(before)
    for c in moved:
        if c.ref.kind in _POLICY_INPUT_KINDS:
            if c.after is None:
                after.pop(c.ref, None)
            else:
                after[c.ref] = c.after
    old, new = policy_lines(before.values()), policy_lines(after.values())
    return tuple(
        sorted(
            [PolicyChange(line, True) for line in new - old]
            + [PolicyChange(line, False) for line in old - new]
        )
    )


def policy_lines(objects: Iterable[Mapping[str, Any]]) -> set[str]:
    """Each policy effect as people read it."""
    mesh = read.mesh(objects)
    lines = {str(v) for v in (*mesh.retries, *mesh.limits, *mesh.egress, *mesh.ingress, *mesh.faults)}
    return lines | ({EGRESS_OPEN} if mesh.egress_open else set())


def _permissive_change(
    moved: Sequence[Change], live: Mapping[ObjectRef, Mapping[str, Any]]
) -> tuple[AccessChange, ...]:
    configs = {r: o for r, o in live.items() if r.kind in _SETTINGS_KINDS}
    before = any(osm.permissive(dict(o)) for o in configs.values())
    for c in moved:
        if c.ref.kind in _SETTINGS_KINDS:
            if c.after is None:
                configs.pop(c.ref, None)
            else:
                configs[c.ref] = c.after
    after = any(osm.permissive(dict(o)) for o in configs.values())
    return () if before == after else (AccessChange(*PERMISSIVE, gained=after),)


def split_shift(change: Change, live: Mapping[ObjectRef, Mapping[str, Any]]) -> SplitShift | None:
    """How a change moves traffic between the backends of a kind that splits it (``Kind.shares``)."""
    kind = BY_NAME.get(change.ref.kind)
    if kind is None or kind.shares is None:
        return None
    before_obj, after_obj = live.get(change.ref), change.after
    before = {} if before_obj is None else _percent(kind.shares(dict(before_obj))[1])
    after = {} if after_obj is None else _percent(kind.shares(dict(after_obj))[1])
    if before == after:
        return None
    root, _ = kind.shares(dict(after_obj or before_obj or {}))
    names = [*before, *(s for s in after if s not in before)]
    return SplitShift(change.ref, root, tuple(BackendShare(n, before.get(n), after.get(n)) for n in names))


def _percent(shares: Mapping[str, Decimal]) -> dict[str, float]:
    return {name: round(float(p), 2) for name, p in shares.items()}


def access_triples(objects: Iterable[Mapping[str, Any]]) -> set[tuple[str, str, str]]:
    """Every (source identity, destination identity, route) the TrafficTargets allow."""
    return {
        (str(p.caller), str(p.destination), route)
        for p in read.mesh(objects).permissions
        for route in p.routes()
    }

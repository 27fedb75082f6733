"""The stages wired together: revision -> validated -> plan -> applied.

Each function does one step and hands a value to the next; the CLI and the
controller call these and nothing deeper.
"""

from __future__ import annotations

import contextlib
import dataclasses
import gc
import hashlib
import json
import logging
from collections.abc import Collection, Iterable, Iterator, Mapping
from datetime import UTC, datetime
from typing import Any

from gitmesh.apis import read, route_status
from gitmesh.cluster.inventory import Applied, ChangeSet, stale
from gitmesh.cluster.port import Changes, Live, ObjectPort, ObjectsFailed, StatusWrite, content_hash
from gitmesh.errors import PlanError, StalePlan
from gitmesh.kube.errors import ApiError
from gitmesh.mesh.state import ServiceRef
from gitmesh.objects import Location, Manifest, ObjectRef
from gitmesh.plan.diff import make_plan
from gitmesh.plan.model import Action, EnvoyChange, Plan, RouteStatus
from gitmesh.plan.validate import Validated, validate
from gitmesh.revision import layout
from gitmesh.revision.diagnostics import Diagnostic
from gitmesh.settings import Settings
from gitmesh.sync.git import Revision
from gitmesh.xds import patch_check

log = logging.getLogger("gitmesh.pipeline")


@contextlib.contextmanager
def _without_cycle_collection() -> Iterator[None]:
    """Loading, validating and diffing build large trees of plain dicts and lists with no
    reference cycles. The cyclic garbage collector can free none of it, only walk all of it,
    again and again: a third of the time on a 10,000-object repo. So it is paused, and what was
    built is then moved out of its sight (``gc.freeze``); reference counting alone frees it.
    The few cycles among it (a YAML loader holds its own bound methods) stay frozen until
    ``thaw``."""
    enabled = gc.isenabled()
    gc.disable()
    try:
        yield
    finally:
        gc.freeze()
        if enabled:
            gc.enable()


def thaw() -> None:
    """Hand what the stages froze back to the collector and collect it: frozen objects are never
    collected, so a long-running caller calls this once it has dropped a revision's results
    (then only what is still alive is walked, once)."""
    gc.unfreeze()
    gc.collect()


@_without_cycle_collection()
def check(revision: Revision, objects: ObjectPort | None = None) -> Validated:
    """Load and validate every file and build of the revision; all diagnostics at once.

    With a cluster's objects, the Services a split names that the revision does not define are looked up
    there (another team's, a Helm chart's); without one they are left unchecked, with a warning.
    """
    loaded = layout.load(
        revision.files,
        revision.builds,
        namespace=revision.namespace,
        acknowledged=revision.acknowledged,
        diagnostics=revision.diagnostics,
    )
    validated = validate(loaded.manifests, loaded.diagnostics)
    if objects is not None and validated.outside:
        present = frozenset(objects.list(validated.outside))
        validated = validate(loaded.manifests, loaded.diagnostics, present)
    validated = _check_patches(validated)
    return dataclasses.replace(validated, diagnostics=layout.explain(validated.diagnostics, loaded.notes))


def _check_patches(validated: Validated) -> Validated:
    """The EnvoyPatches checked on the Envoy resources they change, once the rest is valid (the
    resources are translated from it); a patch with an error is left out of the desired state."""
    if not validated.ok or not any(m.obj["kind"] == "EnvoyPatch" for m in validated.desired):
        return validated
    found = patch_check.diagnostics(validated.desired, read.mesh(m.obj for m in validated.desired))
    failed = {d.ref for d in found if d.is_error}
    return dataclasses.replace(
        validated,
        desired=tuple(m for m in validated.desired if m.ref not in failed),
        diagnostics=tuple(sorted((*validated.diagnostics, *found), key=_order)),
    )


def _order(d: Diagnostic) -> tuple[str, int, int, str]:
    return (d.location.file, d.location.line, d.location.column, d.code)


class Claimed(PlanError):
    """The revision declares objects another source applied: neither source writes over the other's."""

    def __init__(self, source: str, claims: Mapping[ObjectRef, str]) -> None:
        self.claims = claims  # object -> the source that applied it
        named = "; ".join(f"{ref} (source {owner})" for ref, owner in sorted(claims.items())[:5])
        more = f" and {len(claims) - 5} more" if len(claims) > 5 else ""
        super().__init__(
            f"{len(claims)} object(s) of this revision are another source's: {named}{more}; "
            f"nothing of it was applied to leave them as they are: declare each object in one source only"
        )


def _claims(
    settings: Settings, source: str, refs: Collection[ObjectRef], others: Mapping[str, Collection[ObjectRef]]
) -> dict[ObjectRef, str]:
    """Which of ``refs`` other sources' inventories hold, and whose; not those an owner is known to
    no longer declare (it let them go, and keeps them only until another takes them over)."""
    inventories = settings.state.inventories
    return {
        ref: other.source
        for other in inventories.status()
        if other.source != source
        for ref in inventories.get(other.source)
        if ref in refs and (other.source not in others or ref in others[other.source])
    }


def _union(sets: Iterable[Collection[ObjectRef]]) -> set[ObjectRef]:
    return {ref for refs in sets for ref in refs}


@_without_cycle_collection()
def plan(
    revision: Revision,
    validated: Validated,
    settings: Settings,
    source: str,
    others: Mapping[str, Collection[ObjectRef]] | None = None,
) -> Plan:
    """Diff a valid revision against what ``source`` owns in the cluster.

    An object whose manifest is unchanged since gitmesh applied it, and whose
    live version is the one that apply produced, is unchanged on both sides:
    it needs no dry-run. Everything else is predicted by the cluster.

    Two sources never write over each other: an object another source applied is refused
    (``Claimed``). ``others`` is what other sources' last revisions declare, where known (the
    controller knows its own sources'): an object one of them declares is never pruned, and one
    its owner no longer declares may be taken over.
    """
    if not validated.ok:
        raise PlanError(
            f"revision {revision.short} has {len(validated.errors)} error(s); nothing was planned"
        )
    hashes = {m.ref: content_hash(m.obj) for m in validated.desired}
    others = others or {}
    claims = _claims(settings, source, hashes.keys(), others)
    if claims:
        raise Claimed(source, claims)
    live = settings.objects.list()
    inventory = settings.state.inventories.get(source)
    unchanged = {
        ref
        for ref, h in hashes.items()
        if (entry := inventory.get(ref)) is not None
        and ref in live
        and entry.hash == h
        and entry.resource_version == live[ref].resource_version
    }
    to_predict = [m for m in validated.desired if m.ref not in unchanged]
    try:
        predicted = settings.objects.predict([m.obj for m in to_predict])
    except ObjectsFailed as e:
        raise _located(e, {m.ref: m.location for m in to_predict}) from e
    predictions = dict(zip((m.ref for m in to_predict), predicted, strict=True))
    notes = {}
    drifted = set()
    for ref, entry in inventory.items():
        if ref not in hashes or ref in unchanged:
            continue
        if ref not in live:
            notes[ref] = "deleted from the cluster since gitmesh applied it"
        elif entry.hash == hashes[ref]:
            notes[ref] = "drift: changed in the cluster since gitmesh applied it"
            drifted.add(ref)
    conflicts = {ref: p.conflict for ref, p in predictions.items() if p.conflict is not None}
    made = make_plan(
        desired=validated.desired,
        predicted={ref: p.obj for ref, p in predictions.items()},
        unchanged=frozenset(unchanged),
        live={ref: obj.obj for ref, obj in live.items()},
        inventory=inventory,
        stale=stale(inventory, live, validated.declared | hashes.keys() | _union(others.values())),
        source=source,
        revision=revision.sha,
        git_ref=revision.ref,
        backend=settings.objects.describe(),
        fingerprint=fingerprint(
            _with_written_over(settings, live, (m.ref for m in to_predict)),
            inventory,
            settings.state.rollouts.all(),
        ),
        diagnostics=validated.diagnostics,
        conflicts=conflicts,
        notes=notes,
        # The manifest is the one gitmesh applied, so every conflicting field is one it set and
        # someone changed by hand: Git wins.
        take_over=frozenset(drifted & conflicts.keys()),
    )
    return dataclasses.replace(
        made, envoy=_envoy_changes(validated.desired, live), routes=_route_statuses(made, settings, live)
    )


def _route_statuses(
    plan: Plan, settings: Settings, live: Mapping[ObjectRef, Live]
) -> tuple[RouteStatus, ...]:
    """What gitmesh will say of each route the plan keeps, where that differs from what it says now."""
    deleted = {c.ref for c in plan.changes if c.action is Action.DELETE}
    after = {ref: o.obj for ref, o in live.items() if ref not in deleted}
    for c in plan.changes:
        if c.manifest is not None:  # its status and generation are the live object's until applied
            was = after.get(c.ref, {})
            after[c.ref] = {**c.manifest, **({"status": was["status"]} if "status" in was else {})}
    if not any(o.get("kind") in route_status.ROUTE_KINDS for o in after.values()):
        return ()
    objects = [*after.values(), *_looked_up(settings, route_status.missing(after.values()))]
    out = []
    for route, parents in sorted(route_status.routes(objects), key=lambda r: str(ObjectRef.of(r[0]))):
        if not route_status.differs(route, parents):
            continue
        for p in parents:
            failed = [c for c in (p.accepted, p.resolved) if not c.status]
            out.append(
                RouteStatus(
                    ObjectRef.of(route),
                    p.parent(ObjectRef.of(route).namespace),
                    p.accepted.status,
                    p.accepted.reason,
                    p.resolved.status,
                    p.resolved.reason,
                    "; ".join(c.message for c in failed),
                )
            )
    return tuple(out)


def live_route_statuses(settings: Settings) -> list[RouteStatus]:
    """What gitmesh says in the status of each route it applied, as the target keeps it."""
    refs = {r for s in settings.state.inventories.status() for r in settings.state.inventories.get(s.source)}
    routes = settings.objects.list([r for r in refs if r.kind in route_status.ROUTE_KINDS])
    out = []
    for ref, live in sorted(routes.items(), key=lambda kv: str(kv[0])):
        for entry in (live.obj.get("status") or {}).get("parents") or ():
            if entry.get("controllerName") != route_status.CONTROLLER_NAME:
                continue
            said = {c["type"]: c for c in entry.get("conditions") or ()}
            accepted, resolved = said.get("Accepted", {}), said.get("ResolvedRefs", {})
            failed = [c for c in (accepted, resolved) if c.get("status") != "True"]
            out.append(
                RouteStatus(
                    ref,
                    route_status.parent_name(entry["parentRef"], ref.namespace),
                    accepted.get("status") == "True",
                    str(accepted.get("reason", "")),
                    resolved.get("status") == "True",
                    str(resolved.get("reason", "")),
                    "; ".join(str(c.get("message", "")) for c in failed),
                )
            )
    return out


def _looked_up(settings: Settings, services: Iterable[ServiceRef]) -> list[dict[str, Any]]:
    """The Services named that gitmesh does not own, as the cluster has them."""
    refs = [ObjectRef("", "Service", s.namespace, s.name) for s in services]
    return [o.obj for o in settings.objects.list(refs).values()] if refs else []


def write_route_status(settings: Settings, objects: Iterable[Mapping[str, Any]] | None = None) -> int:
    """Bring the status of every route among ``objects`` (by default gitmesh's live objects and the
    Services they name) in step with what gitmesh serves; returns how many were written. A status
    not written (the route moved on meanwhile) is logged: the next pass computes it again."""
    listed = list(objects) if objects is not None else [o.obj for o in settings.objects.list().values()]
    if not any(o.get("kind") in route_status.ROUTE_KINDS for o in listed):
        return 0
    listed += _looked_up(settings, route_status.missing(listed))
    versions = {ObjectRef.of(o): str(o["metadata"].get("resourceVersion", "")) for o in listed}
    now = datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")
    writes = [StatusWrite(ref, versions[ref], s) for ref, s in route_status.changed(listed, now).items()]
    refused = settings.objects.write_status(writes) if writes else []
    for e in refused:
        log.info("route status not written, computed again next time: %s", e)
    return len(writes) - len(refused)


def _envoy_changes(desired: tuple[Manifest, ...], live: Mapping[ObjectRef, Live]) -> tuple[EnvoyChange, ...]:
    """What the revision's EnvoyPatches do to the Envoy resources, against the live ones."""
    was = [o.obj for ref, o in live.items() if ref.kind == "EnvoyPatch"]
    if not was and not any(m.obj["kind"] == "EnvoyPatch" for m in desired):
        return ()
    mesh = read.mesh(m.obj for m in desired)
    return tuple(
        EnvoyChange(d.proxies, d.type, d.name, d.before, d.after)
        for d in patch_check.resource_diffs(mesh, read.mesh(was).patches)
    )


# On a live Namespace: deleting it may take the objects in it that gitmesh does not own.
DELETE_WITH_CONTENTS = "gitmesh.io/delete-with-contents"


def namespace_contents(plan: Plan, settings: Settings) -> dict[str, list[ObjectRef]]:
    """For each Namespace the plan deletes, what else deleting it takes: objects in it that the plan
    does not delete itself (whoever made them)."""
    deleted = {c.ref for c in plan.changes if c.action is Action.DELETE}
    out = {}
    for ref in sorted(deleted, key=str):
        if ref.group == "" and ref.kind == "Namespace":
            others = [r for r in settings.objects.contents(ref.name) if r not in deleted]
            if others:
                out[ref.name] = others
    return out


def _refuse_namespace_deletes(plan: Plan, settings: Settings, live: Mapping[ObjectRef, Live]) -> None:
    def allowed(name: str) -> bool:
        ns = live.get(ObjectRef("", "Namespace", "", name))
        annotations = (ns.obj["metadata"].get("annotations") or {}) if ns else {}
        return annotations.get(DELETE_WITH_CONTENTS) == "true"

    held = {ns: refs for ns, refs in namespace_contents(plan, settings).items() if not allowed(ns)}
    if held:
        what = "; ".join(
            f"Namespace/{ns} holds {len(refs)}: "
            + ", ".join(map(str, refs[:3]))
            + (", ..." if len(refs) > 3 else "")
            for ns, refs in held.items()
        )
        raise PlanError(
            f"this revision deletes Namespaces holding objects it does not delete ({what}); annotate the "
            f'Namespace {DELETE_WITH_CONTENTS}: "true" or pass --delete-namespace-contents if they should go'
        )


def apply(
    plan: Plan,
    settings: Settings,
    *,
    allow_empty: bool = False,
    force_conflicts: bool = False,
    delete_namespace_contents: bool = False,
) -> None:
    """Apply exactly ``plan``: its objects, then its rollouts' state, refusing if anything it was
    made against (objects, the source's inventory, rollouts) moved since. In the embedded store,
    the check and every write are one transaction."""
    with settings.transaction():
        done = _apply(plan, settings, allow_empty, force_conflicts, delete_namespace_contents)
    if done.failures:
        where = {c.ref: c.location for c in plan.changes if c.location}
        raise _located(ObjectsFailed("applied", list(done.failures)), where)
    if any(c.ref.kind in route_status.ROUTE_KINDS for c in plan.changes):
        write_route_status(settings)


def _apply(
    plan: Plan, settings: Settings, allow_empty: bool, force_conflicts: bool, delete_namespace_contents: bool
) -> ChangeSet:
    where = settings.objects.describe()
    if plan.backend != where:
        raise PlanError(f"the plan is for {plan.backend}, not {where}")
    live, inventory = settings.objects.list(), settings.state.inventories.get(plan.source)
    written = (c.ref for c in plan.changes if c.manifest is not None)
    against = _with_written_over(settings, live, written)
    if fingerprint(against, inventory, settings.state.rollouts.all()) != plan.live_fingerprint:
        raise StalePlan("the live state changed since this plan was made; run gitmesh plan again")
    if plan.deletes_everything and not allow_empty:
        raise PlanError(
            f"this revision would delete all {len(plan.changes)} objects that source {plan.source!r} owns; "
            "pass --allow-empty if that is intended"
        )
    conflicted = [c for c in plan.changes if c.conflict is not None and not c.take_over]
    if conflicted and not force_conflicts:
        names = "; ".join(f"{c.ref}: {c.conflict.detail}" for c in conflicted[:5] if c.conflict is not None)
        raise PlanError(
            f"{len(conflicted)} object(s) have fields owned by another field manager ({names}); "
            "pass --force-conflicts to take them over"
        )
    if not delete_namespace_contents:
        _refuse_namespace_deletes(plan, settings, live)
    done = settings.write(
        plan.source,
        plan.revision,
        plan.ref,
        Changes(
            writes=tuple(c.manifest for c in plan.changes if c.manifest is not None),
            deletes=tuple(c.ref for c in plan.changes if c.action is Action.DELETE),
            unchanged=frozenset(
                c.ref for c in plan.changes if c.action is Action.NOOP and c.manifest is None
            ),
            force=frozenset(
                c.ref for c in plan.changes if c.take_over or (c.conflict is not None and force_conflicts)
            ),
        ),
    )
    if not done.failures:
        for step in plan.rollouts:
            if step.record is not None:
                settings.state.rollouts.save(step.split, step.record)
    return done


def _with_written_over(
    settings: Settings, live: Mapping[ObjectRef, Live], written: Iterable[ObjectRef]
) -> dict[ObjectRef, Live]:
    """``live`` (gitmesh's objects) and the objects a plan writes that are not among them: another
    manager's, which it writes over, are part of what the plan was made against too. The plan
    writes (has a manifest for) exactly the objects it predicted that are not in ``live``, so
    plan and apply look up the same ones."""
    return {**live, **settings.objects.list([ref for ref in written if ref not in live])}


def fingerprint(
    live: Mapping[ObjectRef, Live],
    inventory: Mapping[ObjectRef, Applied],
    rollouts: Mapping[str, Mapping[str, Any]],
) -> str:
    """Identifies the state a plan was made against: any write, inventory or rollout change alters it."""
    h = hashlib.sha256()
    for ref in sorted(live):
        h.update(f"{ref.group}/{ref}@{live[ref].resource_version}\n".encode())
    h.update(b"--\n")
    for ref in sorted(inventory):
        entry = inventory[ref]
        h.update(f"{ref.group}/{ref}@{entry.resource_version}#{entry.hash}\n".encode())
    h.update(b"--\n")
    h.update(json.dumps(rollouts, sort_keys=True).encode())
    return h.hexdigest()


def _located(e: ObjectsFailed, written: Mapping[ObjectRef, Location]) -> ObjectsFailed:
    """The server's refusals, each naming where the object is written (the failures kept, so that a
    reconcile can tell per object which were refused)."""
    lines = [
        f"  {f.ref} ({written[f.ref]}): {f.detail}"
        if isinstance(f, ApiError) and f.ref is not None and f.ref in written
        else f"  {f}"
        for f in e.failures
    ]
    return ObjectsFailed(e.verb, e.failures, lines)

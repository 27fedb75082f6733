"""Desired vs live -> Plan. Pure: the backend's dry-run results and live objects come in as data."""

from __future__ import annotations

import json
from collections.abc import Iterable, Mapping, Sequence
from typing import Any

from gitmesh.apis.kinds import apply_rank
from gitmesh.objects import Conflict, Manifest, ObjectRef
from gitmesh.plan import convert, impact
from gitmesh.plan.model import Action, Change, FieldDiff, Plan
from gitmesh.revision.diagnostics import Diagnostic, field_path

# Fields the server sets or owns: never part of what Git says, never a change.
SERVER_METADATA = ("managedFields", "resourceVersion", "uid", "generation", "creationTimestamp", "selfLink")
SERVER_ANNOTATIONS = ("kubectl.kubernetes.io/last-applied-configuration",)


def clean(obj: Mapping[str, Any]) -> dict[str, Any]:
    """A copy without server-set fields and status, for comparison."""
    out = {k: v for k, v in obj.items() if k != "status"}
    meta = {k: v for k, v in (obj.get("metadata") or {}).items() if k not in SERVER_METADATA}
    annotations = {k: v for k, v in (meta.get("annotations") or {}).items() if k not in SERVER_ANNOTATIONS}
    if annotations:
        meta["annotations"] = annotations
    else:
        meta.pop("annotations", None)
    out["metadata"] = meta
    return out


def make_plan(
    *,
    desired: Sequence[Manifest],
    predicted: Mapping[ObjectRef, Mapping[str, Any]],
    live: Mapping[ObjectRef, Mapping[str, Any]],
    inventory: Iterable[ObjectRef],
    stale: Sequence[ObjectRef],
    source: str,
    revision: str | None,
    git_ref: str,
    backend: str,
    fingerprint: str,
    diagnostics: Sequence[Diagnostic] = (),
    conflicts: Mapping[ObjectRef, Conflict] | None = None,
    notes: Mapping[ObjectRef, str] | None = None,
    take_over: frozenset[ObjectRef] = frozenset(),
    unchanged: frozenset[ObjectRef] = frozenset(),
) -> Plan:
    """Compare each desired object, as the backend predicts it once applied, with the live one.

    ``predicted`` maps each desired ref to the backend's dry-run result;
    ``inventory`` is what this source applied before; ``stale``, the part of it to delete
    (``cluster.inventory.stale``).
    ``conflicts`` and ``notes`` (why an object changes, e.g. drift) come from the caller;
    ``take_over`` are the conflicts on gitmesh's own fields, which apply takes back;
    ``unchanged`` are known to be the same on both sides, and need no ``predicted`` entry.
    """
    conflicts, notes = conflicts or {}, notes or {}
    owned = set(inventory)
    changes: list[Change] = []
    for m in sorted(desired, key=lambda m: apply_rank(m.ref)):
        ref = m.ref
        if ref in unchanged:
            changes.append(Change(ref, Action.NOOP, location=m.location))
            continue
        after = clean(predicted[ref])
        current = live.get(ref)
        reasons = [f"converted from {m.converted_from}" if m.converted_from else "", notes.get(ref, "")]
        reason = "; ".join(r for r in reasons if r)
        before = None if current is None else clean(current)
        fields = () if before is not None and _same(before, after) else diff_fields(before, after, m.written)
        if fields:
            action = Action.CREATE if before is None else Action.UPDATE
            conflict = conflicts.get(ref)
            changes.append(
                Change(
                    ref, action, fields, before, after, m.obj, m.location, reason, conflict, ref in take_over
                )
            )
        else:
            # An identical object not yet in the inventory is adopted: apply records it.
            manifest = None if ref in owned else m.obj
            changes.append(Change(ref, Action.NOOP, manifest=manifest, location=m.location))
    # Owned, live, neither applied nor pruned: the revision still declares it (prune's second wall,
    # ``cluster.inventory.stale``). It stays, and stays in the inventory.
    kept = owned - {m.ref for m in desired} - set(stale)
    for ref in sorted((r for r in kept if r in live), key=apply_rank):
        changes.append(Change(ref, Action.NOOP, reason="kept: the revision still has it"))
    for ref in sorted(stale, key=apply_rank, reverse=True):
        before = clean(live[ref])
        changes.append(
            Change(
                ref,
                Action.DELETE,
                diff_fields(before, None),
                before,
                None,
                reason="no longer in the revision",
            )
        )
    return Plan(
        source,
        revision,
        git_ref,
        backend,
        tuple(changes),
        impact.compute(changes, live),
        fingerprint,
        tuple(diagnostics),
    )


def _same(a: Any, b: Any) -> bool:
    """Equal as JSON: unlike ``==``, 1, 1.0 and true differ, as they do to the API server."""
    return json.dumps(a, sort_keys=True) == json.dumps(b, sort_keys=True)


_MISSING = object()


def diff_fields(before: Any, after: Any, written: Mapping[str, Any] | None = None) -> tuple[FieldDiff, ...]:
    """Leaf-level differences between two JSON-like values, in document order. ``written``: the object as
    written in Git when ``after`` was converted from it; each field says how it was written, if otherwise."""
    out: list[FieldDiff] = []
    _diff((), _MISSING if before is None else before, _MISSING if after is None else after, out, written)
    return tuple(out)


def _diff(
    path: tuple[str | int, ...], a: Any, b: Any, out: list[FieldDiff], written: Mapping[str, Any] | None
) -> None:
    if isinstance(a, dict) and isinstance(b, dict):
        for key in [*a, *(k for k in b if k not in a)]:
            _diff((*path, key), a.get(key, _MISSING), b.get(key, _MISSING), out, written)
    elif isinstance(a, list) and isinstance(b, list):
        for i in range(max(len(a), len(b))):
            _diff(
                (*path, i), a[i] if i < len(a) else _MISSING, b[i] if i < len(b) else _MISSING, out, written
            )
    elif a is _MISSING and isinstance(b, dict | list) and b:
        for key, value in b.items() if isinstance(b, dict) else enumerate(b):
            _diff((*path, key), _MISSING, value, out, written)
    elif b is _MISSING and isinstance(a, dict | list) and a:
        for key, value in a.items() if isinstance(a, dict) else enumerate(a):
            _diff((*path, key), value, _MISSING, out, written)
    elif a != b or type(a) is not type(b):
        out.append(
            FieldDiff(
                field_path(path),
                None if a is _MISSING else a,
                None if b is _MISSING else b,
                a is not _MISSING,
                b is not _MISSING,
                _as_written(written, path, b) if written is not None and b is not _MISSING else "",
            )
        )


def _as_written(written: Mapping[str, Any], path: tuple[str | int, ...], value: Any) -> str:
    """The field at ``path`` of a converted object as it was written, when that differs from ``value``."""
    at = convert.written_path(written, path)
    found: Any = written
    try:
        for part in at:
            found = found[part]
    except (KeyError, IndexError, TypeError):
        return ""
    if at == path and _same(found, value):
        return ""
    return f"{field_path(at)}: {json.dumps(found)}"

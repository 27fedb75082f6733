"""The plan's JSON form: what ``gitmesh plan --out FILE`` writes and ``gitmesh apply FILE`` reads.

The format is versioned (``format_version``) and described field by field in
``plan.schema.json`` beside this module; a test checks every encoded plan
against it. Fields are only ever added within a format version.
"""

from __future__ import annotations

import json
from importlib import resources
from typing import Any

from gitmesh.errors import PlanError
from gitmesh.objects import Conflict, Location, ObjectRef
from gitmesh.plan.model import (
    AccessChange,
    Action,
    BackendShare,
    Change,
    EnvoyChange,
    FieldDiff,
    Impact,
    Plan,
    RolloutStep,
    RouteStatus,
    SplitShift,
)
from gitmesh.revision.diagnostics import Diagnostic

FORMAT_VERSION = 2


def json_schema() -> dict[str, Any]:
    schema: dict[str, Any] = json.loads(
        resources.files("gitmesh.plan").joinpath("plan.schema.json").read_text()
    )
    return schema


def encode(plan: Plan) -> dict[str, Any]:
    return {
        "format_version": FORMAT_VERSION,
        "source": plan.source,
        "revision": plan.revision,
        "ref": plan.ref,
        "backend": plan.backend,
        "live_fingerprint": plan.live_fingerprint,
        "summary": {a.value: plan.counts[a] for a in Action},
        "impact": {
            "splits": [
                {
                    "split": _ref(s.split),
                    "service": s.service,
                    "backends": [
                        {"service": b.service, "before": b.before, "after": b.after} for b in s.backends
                    ],
                }
                for s in plan.impact.splits
            ],
            "access": [
                {
                    "caller": a.caller,
                    "destination": a.destination,
                    "route": a.route,
                    "change": "gained" if a.gained else "lost",
                }
                for a in plan.impact.access
            ],
            "policies": [
                {"line": p.line, "change": "gained" if p.gained else "lost"} for p in plan.impact.policies
            ],
        },
        "changes": [_change(c) for c in plan.changes],
        "diagnostics": [
            {
                "code": d.code,
                "severity": d.severity.value,
                "message": d.message,
                "path": d.path,
                "location": _location(d.location),
                "object": _ref(d.ref) if d.ref else None,
            }
            for d in plan.diagnostics
        ],
        "rollouts": [
            {"split": r.split, "note": r.note, "record": r.record, "starts": r.starts} for r in plan.rollouts
        ],
        "envoy": [
            {"proxies": list(e.proxies), "type": e.type, "name": e.name, "before": e.before, "after": e.after}
            for e in plan.envoy
        ],
        "routes": [
            {
                "route": _ref(r.route),
                "parent": r.parent,
                "accepted": r.accepted,
                "accepted_reason": r.accepted_reason,
                "resolved_refs": r.resolved,
                "resolved_refs_reason": r.resolved_reason,
                "message": r.message,
            }
            for r in plan.routes
        ],
    }


def dumps(plan: Plan) -> str:
    return json.dumps(encode(plan), indent=2, sort_keys=False) + "\n"


def loads(text: str) -> Plan:
    try:
        data = json.loads(text)
    except json.JSONDecodeError as e:
        raise PlanError(f"not a plan file: {e}") from e
    if not isinstance(data, dict) or data.get("format_version") != FORMAT_VERSION:
        raise PlanError(f"not a gitmesh plan of format version {FORMAT_VERSION}")
    try:
        return decode(data)
    except (KeyError, TypeError, ValueError) as e:
        raise PlanError(f"malformed plan file: {e!r}") from e


def decode(data: dict[str, Any]) -> Plan:
    impact = data["impact"]
    return Plan(
        source=data["source"],
        revision=data["revision"],
        ref=data["ref"],
        backend=data["backend"],
        live_fingerprint=data["live_fingerprint"],
        changes=tuple(_decode_change(c) for c in data["changes"]),
        impact=Impact(
            splits=tuple(
                SplitShift(
                    _decode_ref(s["split"]),
                    s["service"],
                    tuple(BackendShare(b["service"], b["before"], b["after"]) for b in s["backends"]),
                )
                for s in impact["splits"]
            ),
            access=tuple(
                AccessChange(a["caller"], a["destination"], a["route"], a["change"] == "gained")
                for a in impact["access"]
            ),
        ),
        diagnostics=tuple(
            Diagnostic(
                _decode_location(d["location"]),
                d["code"],
                d["message"],
                d["path"],
                _decode_ref(d["object"]) if d["object"] else None,
            )
            for d in data["diagnostics"]
        ),
        rollouts=tuple(
            RolloutStep(r["split"], r["note"], r["record"], r["starts"]) for r in data.get("rollouts", ())
        ),
        envoy=tuple(
            EnvoyChange(tuple(e["proxies"]), e["type"], e["name"], e["before"], e["after"])
            for e in data.get("envoy", ())
        ),
        routes=tuple(
            RouteStatus(
                _decode_ref(r["route"]),
                r["parent"],
                r["accepted"],
                r["accepted_reason"],
                r["resolved_refs"],
                r["resolved_refs_reason"],
                r["message"],
            )
            for r in data.get("routes", ())
        ),
    )


def _change(c: Change) -> dict[str, Any]:
    out: dict[str, Any] = {"object": _ref(c.ref), "action": c.action.value}
    if c.location:
        out["location"] = _location(c.location)
    if c.reason:
        out["reason"] = c.reason
    if c.conflict is not None:
        out["conflict"] = {"fields": list(c.conflict.fields), "detail": c.conflict.detail}
    if c.take_over:
        out["take_over"] = True
    if c.action is Action.NOOP:
        if c.manifest is not None:
            out["manifest"] = c.manifest
        return out
    out["diff"] = [
        {"path": f.path, "op": f.op}
        | ({"before": f.before} if f.has_before else {})
        | ({"after": f.after} if f.has_after else {})
        | ({"written": f.written} if f.written else {})
        for f in c.diff
    ]
    out["before"], out["after"], out["manifest"] = c.before, c.after, c.manifest
    return out


def _decode_conflict(c: dict[str, Any]) -> Conflict:
    return Conflict(tuple(c["fields"]), c["detail"])


def _decode_change(c: dict[str, Any]) -> Change:
    return Change(
        ref=_decode_ref(c["object"]),
        action=Action(c["action"]),
        diff=tuple(
            FieldDiff(
                f["path"], f.get("before"), f.get("after"), "before" in f, "after" in f, f.get("written", "")
            )
            for f in c.get("diff", ())
        ),
        before=c.get("before"),
        after=c.get("after"),
        manifest=c.get("manifest"),
        location=_decode_location(c["location"]) if "location" in c else None,
        reason=c.get("reason", ""),
        conflict=_decode_conflict(c["conflict"]) if "conflict" in c else None,
        take_over=c.get("take_over", False),
    )


def _ref(r: ObjectRef) -> dict[str, str]:
    return {"group": r.group, "kind": r.kind, "namespace": r.namespace, "name": r.name}


def _decode_ref(d: dict[str, str]) -> ObjectRef:
    return ObjectRef(d["group"], d["kind"], d["namespace"], d["name"])


def _location(loc: Location) -> dict[str, Any]:
    return {"file": loc.file, "line": loc.line, "column": loc.column}


def _decode_location(d: dict[str, Any]) -> Location:
    return Location(d["file"], d["line"], d["column"])

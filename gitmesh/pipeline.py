"""The stages wired together: revision -> validated -> plan -> applied.

Each function does one step and hands a value to the next; the CLI and the
controller call these and nothing deeper.
"""

from __future__ import annotations

from gitmesh.cluster.backend import ClusterBackend, fingerprint
from gitmesh.errors import PlanError, StalePlan
from gitmesh.plan.diff import make_plan
from gitmesh.plan.load import load_files
from gitmesh.plan.model import Action, Plan
from gitmesh.plan.validate import Validated, validate
from gitmesh.sync.git import Revision


def check(revision: Revision) -> Validated:
    """Load and validate every file of the revision; all diagnostics at once."""
    loaded = load_files(revision.files)
    return validate(loaded.manifests, loaded.diagnostics)


def plan(revision: Revision, validated: Validated, backend: ClusterBackend, source: str) -> Plan:
    """Diff a valid revision against what ``source`` owns in the backend."""
    if not validated.ok:
        raise PlanError(
            f"revision {revision.short} has {len(validated.errors)} error(s); nothing was planned"
        )
    live = backend.list_managed()
    inventory = backend.inventory(source)
    return make_plan(
        desired=validated.desired,
        predicted={m.ref: backend.dry_run(m.obj) for m in validated.desired},
        live={ref: obj.obj for ref, obj in live.items()},
        inventory=inventory,
        source=source,
        revision=revision.sha,
        git_ref=revision.ref,
        backend=backend.describe(),
        fingerprint=fingerprint(live, inventory),
        diagnostics=validated.diagnostics,
    )


def apply(plan: Plan, backend: ClusterBackend, *, allow_empty: bool = False) -> None:
    """Apply exactly ``plan``, refusing if the live state moved since it was made."""
    if plan.backend != backend.describe():
        raise PlanError(f"the plan is for {plan.backend}, not {backend.describe()}")
    current = fingerprint(backend.list_managed(), backend.inventory(plan.source))
    if current != plan.live_fingerprint:
        raise StalePlan("the live state changed since this plan was made; run gitmesh plan again")
    if plan.deletes_everything and not allow_empty:
        raise PlanError(
            f"this revision would delete all {len(plan.changes)} objects that source {plan.source!r} owns; "
            "pass --allow-empty if that is intended"
        )
    backend.apply(
        plan.source,
        plan.revision,
        plan.ref,
        objects=[c.manifest for c in plan.changes if c.manifest is not None],
        deletes=[c.ref for c in plan.changes if c.action is Action.DELETE],
        inventory=frozenset(c.ref for c in plan.changes if c.action is not Action.DELETE),
    )

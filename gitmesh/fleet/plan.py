"""``gitmesh fleet plan``: what a revision of one configuration would change on each member.

Each member is planned in a store of its own, in memory: its reported applied revision (at its
overlay's path) is applied there first, then the revision is planned against it, as
``gitmesh plan --base --head`` does for a pull request. A member that has applied nothing yet is
planned against an empty mesh; one whose path is invalid at the revision says so, with the first error.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import git

from gitmesh import pipeline, settings
from gitmesh.errors import GitmeshError
from gitmesh.fleet.model import Configuration, Member
from gitmesh.plan.model import Plan, SplitShift
from gitmesh.sync.git import read_revision


@dataclass(frozen=True)
class MemberPlan:
    cluster: str
    path: str
    base: str | None  # the revision the member reported applied; None: nothing yet
    summary: str  # the plan's one line, or why there is none
    plan: Plan | None  # None: the revision is invalid at this member's path, or unreadable

    @property
    def splits(self) -> tuple[SplitShift, ...]:
        return self.plan.impact.splits if self.plan else ()


def plan_members(
    repo: git.Repo,
    ref: str,
    configuration: Configuration,
    members: Sequence[tuple[Member, Mapping[str, Any]]],
) -> list[MemberPlan]:
    """A plan per member the configuration selects (``members``: each with its FleetCluster status)."""
    plans = []
    for member, status in members:
        if not configuration.selects(member):
            continue
        path = configuration.source(member).path
        reported: Mapping[str, Any] = next(
            (c for c in status.get("configurations") or () if c.get("name") == configuration.name), {}
        )
        base = reported.get("appliedRevision") or None
        plans.append(_plan_one(repo, ref, configuration, member.name, path, base))
    return plans


def _plan_one(
    repo: git.Repo, ref: str, configuration: Configuration, cluster: str, path: str, base: str | None
) -> MemberPlan:
    store = settings.embedded(":memory:")
    try:
        if base:
            before = read_revision(repo, base, path, configuration.namespace)
            checked = pipeline.check(before)
            if checked.ok:
                pipeline.apply(pipeline.plan(before, checked, store, configuration.name), store)
        revision = read_revision(repo, ref, path, configuration.namespace)
        validated = pipeline.check(revision)
        if not validated.ok:
            first = validated.errors[0]
            return MemberPlan(
                cluster,
                path,
                base,
                f"invalid: {len(validated.errors)} error(s), the first {first.location}: {first.code} "
                f"{first.path + ': ' if first.path else ''}{first.message}",
                None,
            )
        result = pipeline.plan(revision, validated, store, configuration.name)
        return MemberPlan(cluster, path, base, result.summary(), result)
    except GitmeshError as e:
        return MemberPlan(cluster, path, base, f"cannot plan: {e}", None)
    finally:
        store.close()

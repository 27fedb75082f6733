"""The plan: a value saying what applying a revision would change, and what that does to traffic.

Pure data. Making a plan lives in ``diff``, rendering in ``render``, the JSON
form in ``encode``.
"""

from __future__ import annotations

import enum
from collections import Counter
from dataclasses import dataclass, field
from typing import Any

from gitmesh.objects import Conflict, Location, ObjectRef
from gitmesh.revision.diagnostics import Diagnostic


class Action(enum.StrEnum):
    CREATE = "create"
    UPDATE = "update"
    DELETE = "delete"
    NOOP = "no-op"


@dataclass(frozen=True)
class FieldDiff:
    """One changed field. ``has_before`` is false when it is added, ``has_after`` when removed."""

    path: str
    before: Any = None
    after: Any = None
    has_before: bool = True
    has_after: bool = True
    written: str = ""  # for a converted object, the field as written where it differs: 'weight: "500m"'

    @property
    def op(self) -> str:
        if not self.has_before:
            return "add"
        if not self.has_after:
            return "remove"
        return "change"


@dataclass(frozen=True)
class Change:
    """What happens to one object.

    ``before`` is the live object and ``after`` the object as it will be once
    applied, both without server-set fields; ``manifest`` is what gets sent.
    No-op changes carry only the ref, to keep large plans small.
    """

    ref: ObjectRef
    action: Action
    diff: tuple[FieldDiff, ...] = ()
    before: dict[str, Any] | None = None
    after: dict[str, Any] | None = None
    manifest: dict[str, Any] | None = None
    location: Location | None = None
    reason: str = ""  # for people only; never steers apply
    conflict: Conflict | None = None  # fields another field manager owns; apply refuses unless forced
    take_over: bool = False  # the conflict is on gitmesh's own fields, changed by hand: apply takes them back


@dataclass(frozen=True)
class BackendShare:
    service: str
    before: float | None  # percent of the root service's traffic; None: not a backend then
    after: float | None


@dataclass(frozen=True)
class SplitShift:
    split: ObjectRef
    service: str
    backends: tuple[BackendShare, ...]


@dataclass(frozen=True, order=True)
class AccessChange:
    """A caller gaining or losing a route to a destination. Identities are ns/serviceaccount; "*" is
    every identity (permissive mode)."""

    caller: str
    destination: str
    route: str
    gained: bool


@dataclass(frozen=True, order=True)
class PolicyChange:
    """A policy's effect on traffic appearing or going: ``shop/bookbuyer may reach
    api.example.com:443 (tls)``, ``shop/bookstore limits connections 100``."""

    line: str
    gained: bool


@dataclass(frozen=True)
class Impact:
    splits: tuple[SplitShift, ...] = ()
    access: tuple[AccessChange, ...] = ()
    policies: tuple[PolicyChange, ...] = ()

    @property
    def empty(self) -> bool:
        return not self.splits and not self.access and not self.policies


@dataclass(frozen=True)
class RolloutStep:
    """What applying the plan does to one split's rollout: the rollout state kept with the applied
    objects (None: left as it is) and, for people, what that means."""

    split: str  # namespace/name
    note: str
    record: dict[str, Any] | None = None  # the rollout's JSON form (``gitmesh.rollout.model``)
    starts: bool = False  # a rollout starts: its first phase is announced once applied


@dataclass(frozen=True)
class EnvoyChange:
    """What applying the plan does to one Envoy resource of the proxies listed (EnvoyPatch):
    before and after as JSON in Envoy's proto field names; "" where there is none."""

    proxies: tuple[str, ...]
    type: str  # Listener, RouteConfiguration or Cluster
    name: str
    before: str
    after: str


@dataclass(frozen=True)
class RouteStatus:
    """What gitmesh will say of a route on one Service parent once the plan is applied (its
    ``status.parents`` entry): Accepted, and whether every backend resolved, with the spec's reasons."""

    route: ObjectRef
    parent: str  # namespace/name, and :port when the route names one
    accepted: bool
    accepted_reason: str
    resolved: bool
    resolved_reason: str
    message: str  # why not, when either is false


@dataclass(frozen=True)
class Plan:
    source: str
    revision: str | None
    ref: str
    backend: str
    changes: tuple[Change, ...]
    impact: Impact
    live_fingerprint: str
    diagnostics: tuple[Diagnostic, ...] = field(default=())
    rollouts: tuple[RolloutStep, ...] = ()
    envoy: tuple[EnvoyChange, ...] = ()  # derived from the objects, for people: apply ignores it
    routes: tuple[RouteStatus, ...] = ()  # the route statuses that change, for people: apply derives its own

    @property
    def counts(self) -> Counter[Action]:
        return Counter(c.action for c in self.changes)

    @property
    def has_changes(self) -> bool:
        return any(c.action is not Action.NOOP for c in self.changes)

    @property
    def deletes_everything(self) -> bool:
        """True when the plan would leave gitmesh owning nothing while it owns something now."""
        counts = self.counts
        return counts[Action.DELETE] > 0 and counts[Action.DELETE] == len(self.changes)

    def summary(self) -> str:
        c = self.counts
        if not self.has_changes:
            return f"No changes. {c[Action.NOOP]} objects up to date."
        return (
            f"{c[Action.CREATE]} to create, {c[Action.UPDATE]} to update, {c[Action.DELETE]} to delete, "
            f"{c[Action.NOOP]} unchanged."
        )

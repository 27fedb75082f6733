"""The inventory: what a source applied last, the only objects its prune may delete.

Pure functions over values, the same for every cluster: an apply reports what it did as a
``ChangeSet`` and the next inventory follows from it and the previous one.
"""

from __future__ import annotations

from collections.abc import Collection, Iterable, Mapping
from dataclasses import dataclass, field

from gitmesh.errors import ClusterError
from gitmesh.objects import ObjectRef


@dataclass(frozen=True)
class Applied:
    """An inventory entry: what gitmesh last applied for an object, and the version that produced."""

    hash: str  # content_hash of the manifest sent
    resource_version: str


@dataclass(frozen=True)
class ChangeSet:
    """What one apply did. ``untouched`` are objects it was given but did not write: the unchanged
    ones, and, after a failure, the writes and deletes it did not reach."""

    applied: Mapping[ObjectRef, Applied] = field(default_factory=dict)
    deleted: frozenset[ObjectRef] = frozenset()
    untouched: frozenset[ObjectRef] = frozenset()
    failures: tuple[ClusterError, ...] = ()


def next_inventory(previous: Mapping[ObjectRef, Applied], changes: ChangeSet) -> dict[ObjectRef, Applied]:
    """The inventory after ``changes``: what was written, and what was left as it was (an object
    not reached keeps its old entry, so a later prune still knows it). Anything else the previous
    inventory held is neither declared nor live: it is forgotten."""
    kept = {ref: entry for ref, entry in previous.items() if ref in changes.untouched}
    return kept | dict(changes.applied)


def stale(
    previous: Iterable[ObjectRef], live: Collection[ObjectRef], declared: Collection[ObjectRef]
) -> list[ObjectRef]:
    """What prune deletes, for every cluster: objects the source applied that are still live and
    that the revision no longer declares. ``declared`` holds every object of the revision, whatever
    its version and whether or not it validated: an object still written in Git is never deleted,
    whatever else went wrong."""
    return [ref for ref in previous if ref in live and ref not in declared]

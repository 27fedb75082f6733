"""The inventory's pure function: what an apply leaves in it (prune's ``stale``: test_prune)."""

from __future__ import annotations

from gitmesh.cluster.inventory import Applied, ChangeSet, next_inventory
from gitmesh.errors import ClusterError
from gitmesh.objects import ObjectRef

A, B, C, D = (ObjectRef("", "Service", "store", n) for n in "abcd")
OLD = {A: Applied("a1", "1"), B: Applied("b1", "2"), C: Applied("c1", "3")}


def test_written_objects_take_their_new_entries_and_unchanged_keep_theirs() -> None:
    done = ChangeSet(applied={A: Applied("a2", "7"), D: Applied("d1", "8")}, untouched=frozenset({B}))
    assert next_inventory(OLD, done) == {A: Applied("a2", "7"), B: OLD[B], D: Applied("d1", "8")}


def test_deleted_objects_leave_and_objects_neither_declared_nor_live_are_forgotten() -> None:
    done = ChangeSet(deleted=frozenset({C}), untouched=frozenset({A}))
    assert next_inventory(OLD, done) == {A: OLD[A]}


def test_after_a_failure_what_was_not_reached_keeps_its_entry_so_prune_still_knows_it() -> None:
    failed = ChangeSet(
        applied={A: Applied("a2", "7")},
        untouched=frozenset({B, C}),  # B's write and C's delete were not reached
        failures=(ClusterError("refused"),),
    )
    assert next_inventory(OLD, failed) == {A: Applied("a2", "7"), B: OLD[B], C: OLD[C]}

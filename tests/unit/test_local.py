"""The embedded store keeps the backend contract: ownership, inventory, resource versions, status."""

from __future__ import annotations

import sqlite3
from dataclasses import replace
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest

from gitmesh.cluster import backend as backends
from gitmesh.cluster.backend import Changes, content_hash, fingerprint, is_owned
from gitmesh.cluster.local import LocalBackend
from gitmesh.cluster.records import Condition, Reconcile, SourceRecord
from gitmesh.errors import ClusterError
from gitmesh.objects import MANAGED_BY_LABEL, ObjectRef
from tests import factory as f

SVC = f.service("store", "bookstore", 80)
NS = f.namespace("store")


def put(
    store: LocalBackend,
    source: str,
    revision: str,
    ref: str,
    writes: list[dict[str, Any]],
    deletes: tuple[ObjectRef, ...] = (),
    unchanged: frozenset[ObjectRef] = frozenset(),
) -> None:
    backends.write(store, source, revision, ref, Changes(tuple(writes), deletes, unchanged))


@pytest.fixture
def store(tmp_path: Path) -> LocalBackend:
    return LocalBackend(tmp_path / "state" / "store.db")


def test_applied_objects_are_listed_with_label_and_server_fields(store: LocalBackend) -> None:
    put(store, "default", "sha1", "main", [NS, SVC])
    live = store.list_managed()
    assert set(live) == {ObjectRef.of(NS), ObjectRef.of(SVC)}
    svc = live[ObjectRef.of(SVC)].obj
    assert svc["metadata"]["labels"][MANAGED_BY_LABEL] == "gitmesh"
    assert svc["metadata"]["resourceVersion"] == live[ObjectRef.of(SVC)].resource_version
    assert svc["metadata"]["creationTimestamp"].endswith("Z")
    assert svc["spec"] == SVC["spec"]
    assert "labels" not in SVC["metadata"], "apply must not modify its input"


def test_resource_versions_grow_on_every_write(store: LocalBackend) -> None:
    put(store, "default", "a", "main", [SVC])
    first = store.list_managed()[ObjectRef.of(SVC)].resource_version
    put(store, "default", "b", "main", [f.service("store", "bookstore", 81)])
    second = store.list_managed()[ObjectRef.of(SVC)].resource_version
    assert int(second) > int(first)


def test_the_store_version_moves_on_a_delete_alone(store: LocalBackend) -> None:
    # gitmesh run republishes when version() moves: a revision that only deletes must move it.
    put(store, "default", "a", "main", [NS, SVC])
    before = store.version()
    put(store, "default", "b", "main", [], (ObjectRef.of(SVC),))
    assert int(store.version()) > int(before)


def test_fingerprint_changes_with_any_write_or_inventory_change(store: LocalBackend) -> None:
    put(store, "default", "a", "main", [SVC])
    before = fingerprint(store.list_managed(), store.inventory("default"))
    assert before == fingerprint(store.list_managed(), store.inventory("default"))
    put(store, "other", "a", "main", [])
    assert before == fingerprint(store.list_managed(), store.inventory("default"))
    put(store, "default", "b", "main", [SVC])
    assert before != fingerprint(store.list_managed(), store.inventory("default"))


def test_deletes_and_inventory(store: LocalBackend) -> None:
    put(store, "default", "a", "main", [NS, SVC])
    kept = store.inventory("default")[ObjectRef.of(NS)]
    put(store, "default", "b", "main", [], (ObjectRef.of(SVC),), frozenset({ObjectRef.of(NS)}))
    assert set(store.list_managed()) == {ObjectRef.of(NS)}
    assert store.inventory("default") == {ObjectRef.of(NS): kept}
    assert store.inventory("someone-else") == {}


def test_inventory_records_the_content_hash_and_version_applied(store: LocalBackend) -> None:
    put(store, "default", "a", "main", [SVC])
    (entry,) = store.inventory("default").values()
    assert entry.hash == content_hash(SVC)
    assert entry.resource_version == store.list_managed()[ObjectRef.of(SVC)].resource_version


def test_objects_without_the_label_are_not_listed_as_managed(store: LocalBackend) -> None:
    put(store, "default", "a", "main", [SVC])
    # Someone else writes an object into the same store, without gitmesh's label.
    db = sqlite3.connect(store.path)
    db.execute("INSERT INTO objects VALUES ('', 'Service', 'store', 'theirs', '{\"metadata\": {}}', 99, 'x')")
    db.commit()
    db.close()
    assert set(store.list_managed()) == {ObjectRef.of(SVC)}
    assert all(is_owned(live.obj) for live in store.list_managed().values())


def test_status_reports_revision_counts_and_last_error(store: LocalBackend) -> None:
    put(store, "default", "sha1", "main", [NS, SVC])
    store.record_error("default", "revision sha2 is invalid")
    (status,) = store.status()
    assert (status.source, status.revision, status.ref) == ("default", "sha1", "main")
    assert dict(status.objects) == {"Namespace": 1, "Service": 1}
    assert status.last_error == "revision sha2 is invalid"
    assert status.last_error_at is not None
    put(store, "default", "sha3", "main", [NS, SVC])
    (status,) = store.status()
    assert (status.revision, status.last_error) == ("sha3", "")


def test_a_failed_apply_changes_nothing(store: LocalBackend) -> None:
    put(store, "default", "a", "main", [SVC])
    before = store.list_managed()
    with pytest.raises(TypeError):
        # A body that cannot be stored (not JSON-serialisable) fails after the first write.
        put(store, "default", "b", "main", [NS, {**SVC, "spec": {"bad": object()}}])
    assert store.list_managed() == before
    assert set(store.inventory("default")) == {ObjectRef.of(SVC)}


def test_unopenable_store_is_a_cluster_error(tmp_path: Path) -> None:
    (tmp_path / "file").write_text("x")
    with pytest.raises(ClusterError, match="cannot open the embedded store"):
        LocalBackend(tmp_path / "file" / "store.db")


def test_records_and_suspension_are_kept_apart(store: LocalBackend, tmp_path: Path) -> None:
    now = datetime(2026, 1, 2, 3, 4, 5, tzinfo=UTC)
    record = SourceRecord(
        "mesh",
        (Condition("Ready", True, "ReconciliationSucceeded", "Applied revision main@sha1:abc", now),),
        last_applied="abc",
        last_attempted="abc",
        history=(Reconcile("abc", "main", now, 0.25, "applied", "1 to create", "start"),),
    )
    store.save_record(record)
    store.set_suspended("mesh", True)
    store.save_record(replace(record, last_attempted="def"))  # the controller writing again
    reopened = LocalBackend(tmp_path / "state" / "store.db")
    assert reopened.records() == [replace(record, last_attempted="def")]
    assert reopened.suspended() == {"mesh"}
    reopened.set_suspended("mesh", False)
    assert store.suspended() == frozenset()

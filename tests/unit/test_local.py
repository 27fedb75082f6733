"""The embedded store keeps the object port's and the state stores' contracts: ownership, inventory,
resource versions, status, records."""

from __future__ import annotations

import sqlite3
from dataclasses import replace
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest

from gitmesh.cluster.port import Changes, content_hash, is_owned
from gitmesh.errors import ClusterError
from gitmesh.objects import MANAGED_BY_LABEL, ObjectRef
from gitmesh.pipeline import fingerprint
from gitmesh.settings import Settings, embedded
from gitmesh.state.records import Condition, Reconcile, SourceRecord
from tests import factory as f

SVC = f.service("store", "bookstore", 80)
NS = f.namespace("store")


def put(
    store: Settings,
    source: str,
    revision: str,
    ref: str,
    writes: list[dict[str, Any]],
    deletes: tuple[ObjectRef, ...] = (),
    unchanged: frozenset[ObjectRef] = frozenset(),
) -> None:
    store.write(source, revision, ref, Changes(tuple(writes), deletes, unchanged))


@pytest.fixture
def store(tmp_path: Path) -> Settings:
    return embedded(tmp_path / "state" / "store.db")


def test_applied_objects_are_listed_with_label_and_server_fields(store: Settings) -> None:
    put(store, "default", "sha1", "main", [NS, SVC])
    live = store.objects.list()
    assert set(live) == {ObjectRef.of(NS), ObjectRef.of(SVC)}
    svc = live[ObjectRef.of(SVC)].obj
    assert svc["metadata"]["labels"][MANAGED_BY_LABEL] == "gitmesh"
    assert svc["metadata"]["resourceVersion"] == live[ObjectRef.of(SVC)].resource_version
    assert svc["metadata"]["creationTimestamp"].endswith("Z")
    assert svc["spec"] == SVC["spec"]
    assert "labels" not in SVC["metadata"], "apply must not modify its input"


def test_resource_versions_grow_on_every_write(store: Settings) -> None:
    put(store, "default", "a", "main", [SVC])
    first = store.objects.list()[ObjectRef.of(SVC)].resource_version
    put(store, "default", "b", "main", [f.service("store", "bookstore", 81)])
    second = store.objects.list()[ObjectRef.of(SVC)].resource_version
    assert int(second) > int(first)


def test_the_store_version_moves_on_a_delete_alone(store: Settings) -> None:
    # gitmesh run republishes when version() moves: a revision that only deletes must move it.
    put(store, "default", "a", "main", [NS, SVC])
    before = store.objects.watch().version()
    put(store, "default", "b", "main", [], (ObjectRef.of(SVC),))
    assert int(store.objects.watch().version()) > int(before)


def test_fingerprint_changes_with_any_write_or_inventory_change(store: Settings) -> None:
    put(store, "default", "a", "main", [SVC])
    before = fingerprint(store.objects.list(), store.state.inventories.get("default"), {})
    assert before == fingerprint(store.objects.list(), store.state.inventories.get("default"), {})
    put(store, "other", "a", "main", [])
    assert before == fingerprint(store.objects.list(), store.state.inventories.get("default"), {})
    put(store, "default", "b", "main", [SVC])
    assert before != fingerprint(store.objects.list(), store.state.inventories.get("default"), {})


def test_deletes_and_inventory(store: Settings) -> None:
    put(store, "default", "a", "main", [NS, SVC])
    kept = store.state.inventories.get("default")[ObjectRef.of(NS)]
    put(store, "default", "b", "main", [], (ObjectRef.of(SVC),), frozenset({ObjectRef.of(NS)}))
    assert set(store.objects.list()) == {ObjectRef.of(NS)}
    assert store.state.inventories.get("default") == {ObjectRef.of(NS): kept}
    assert store.state.inventories.get("someone-else") == {}


def test_inventory_records_the_content_hash_and_version_applied(store: Settings) -> None:
    put(store, "default", "a", "main", [SVC])
    (entry,) = store.state.inventories.get("default").values()
    assert entry.hash == content_hash(SVC)
    assert entry.resource_version == store.objects.list()[ObjectRef.of(SVC)].resource_version


def test_objects_without_the_label_are_not_listed_as_managed(store: Settings, tmp_path: Path) -> None:
    put(store, "default", "a", "main", [SVC])
    # Someone else writes an object into the same store, without gitmesh's label.
    db = sqlite3.connect(tmp_path / "state" / "store.db")
    db.execute("INSERT INTO objects VALUES ('', 'Service', 'store', 'theirs', '{\"metadata\": {}}', 99, 'x')")
    db.commit()
    db.close()
    assert set(store.objects.list()) == {ObjectRef.of(SVC)}
    assert all(is_owned(live.obj) for live in store.objects.list().values())


def test_status_reports_revision_counts_and_last_error(store: Settings) -> None:
    put(store, "default", "sha1", "main", [NS, SVC])
    store.state.inventories.record_error("default", "revision sha2 is invalid")
    (status,) = store.state.inventories.status()
    assert (status.source, status.revision, status.ref) == ("default", "sha1", "main")
    assert dict(status.objects) == {"Namespace": 1, "Service": 1}
    assert status.last_error == "revision sha2 is invalid"
    assert status.last_error_at is not None
    put(store, "default", "sha3", "main", [NS, SVC])
    (status,) = store.state.inventories.status()
    assert (status.revision, status.last_error) == ("sha3", "")


def test_a_failed_apply_changes_nothing(store: Settings) -> None:
    put(store, "default", "a", "main", [SVC])
    before = store.objects.list()
    with pytest.raises(TypeError):
        # A body that cannot be stored (not JSON-serialisable) fails after the first write.
        put(store, "default", "b", "main", [NS, {**SVC, "spec": {"bad": object()}}])
    assert store.objects.list() == before
    assert set(store.state.inventories.get("default")) == {ObjectRef.of(SVC)}


def test_unopenable_store_is_a_cluster_error(tmp_path: Path) -> None:
    (tmp_path / "file").write_text("x")
    with pytest.raises(ClusterError, match="cannot open the embedded store"):
        embedded(tmp_path / "file" / "store.db")


def test_records_and_suspension_are_kept_apart(store: Settings, tmp_path: Path) -> None:
    now = datetime(2026, 1, 2, 3, 4, 5, tzinfo=UTC)
    record = SourceRecord(
        "mesh",
        (Condition("Ready", True, "ReconciliationSucceeded", "Applied revision main@sha1:abc", now),),
        last_applied="abc",
        last_attempted="abc",
        history=(Reconcile("abc", "main", now, 0.25, "applied", "1 to create", "start"),),
    )
    store.state.records.save(record)
    store.state.records.set_suspended("mesh", True)
    store.state.records.save(replace(record, last_attempted="def"))  # the controller writing again
    reopened = embedded(tmp_path / "state" / "store.db")
    assert reopened.state.records.all() == [replace(record, last_attempted="def")]
    assert reopened.state.records.suspended() == {"mesh"}
    reopened.state.records.set_suspended("mesh", False)
    assert store.state.records.suspended() == frozenset()

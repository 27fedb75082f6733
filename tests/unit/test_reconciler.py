"""The reconciler against a fake object port: what it applies, what it refuses, what it records."""

from __future__ import annotations

import threading

import pytest

from gitmesh.controller.metrics import Metrics
from gitmesh.controller.reconciler import Reconciler
from gitmesh.objects import ObjectRef
from gitmesh.state.records import MESSAGE_KEPT, OBJECTS_KEPT, ObjectResult, SourceRecord, kept_objects
from gitmesh.sync.source import Source
from tests import factory as f
from tests.conftest import GitRepo
from tests.fakes import FakeObjects, settings

SPLIT = ObjectRef("split.smi-spec.io", "TrafficSplit", "store", "bookstore-split")


def reconciler(git_repo: GitRepo, objects: FakeObjects) -> Reconciler:
    source = Source(name="mesh", url=str(git_repo.path))
    return Reconciler((source,), settings(objects), Metrics(), threading.Event())


def weights(objects: FakeObjects) -> dict[str, int]:
    return {b["service"]: b["weight"] for b in objects.objects[SPLIT].obj["spec"]["backends"]}


def test_a_commit_is_applied_and_recorded(git_repo: GitRepo) -> None:
    bookstore = f.bookstore()
    sha = git_repo.commit("bookstore", {"mesh.yaml": f.dump(*bookstore)})
    objects = FakeObjects()
    r = reconciler(git_repo, objects)
    assert r.reconcile("mesh", frozenset({"start"})) is None
    assert set(objects.objects) == {ObjectRef.of(o) for o in bookstore}
    assert set(r.settings.state.inventories.get("mesh")) == set(objects.objects)
    (record,) = r.records()
    assert (record.last_applied, record.history[0].result) == (sha, "applied")


def test_an_invalid_commit_changes_nothing_and_prune_keeps_what_is_declared(
    git_repo: GitRepo,
) -> None:
    bookstore = f.bookstore()
    good = git_repo.commit("bookstore", {"mesh.yaml": f.dump(*bookstore)})
    objects = FakeObjects()
    r = reconciler(git_repo, objects)
    r.reconcile("mesh", frozenset({"start"}))
    before = dict(objects.objects)
    broken = [f.split("store", "bookstore-split", "bookstore", {"bookstore-v1": -5})]
    git_repo.commit("broken", {"mesh.yaml": f.dump(*bookstore[:-3], *broken)})
    r.reconcile("mesh", frozenset({"manual"}))
    assert objects.objects == before
    (record,) = r.records()
    assert (record.last_applied, record.history[0].result) == (good, "invalid")
    # Gone from a valid revision, objects are pruned; the rest stay as they were.
    git_repo.commit("no access", {"mesh.yaml": f.dump(*bookstore[:-2])})
    r.reconcile("mesh", frozenset({"manual"}))
    assert set(objects.objects) == {ObjectRef.of(o) for o in bookstore[:-2]}
    assert weights(objects) == {"bookstore-v1": 90, "bookstore-v2": 10}


def test_the_record_says_what_became_of_each_object(git_repo: GitRepo) -> None:
    bookstore = f.bookstore()
    git_repo.commit("bookstore", {"mesh.yaml": f.dump(*bookstore)})
    r = reconciler(git_repo, FakeObjects())
    r.reconcile("mesh", frozenset({"start"}))
    (record,) = r.records()
    assert {o.result for o in record.objects} == {"created"}
    assert {o.object for o in record.objects} == {str(ObjectRef.of(o)) for o in bookstore}
    broken = [f.split("store", "bookstore-split", "bookstore", {"bookstore-v1": -5})]
    git_repo.commit("broken", {"mesh.yaml": f.dump(*bookstore[:-3], *broken)})
    r.reconcile("mesh", frozenset({"manual"}))
    (record,) = r.records()
    (invalid,) = record.objects
    assert (invalid.object, invalid.result) == ("TrafficSplit/store/bookstore-split", "invalid")
    assert "mesh.yaml" in invalid.message and "GM" in invalid.message, invalid.message
    assert SourceRecord.from_json(record.to_json()).objects == record.objects


def test_a_record_keeps_a_bounded_number_of_object_results_failures_first() -> None:
    results = [ObjectResult(f"Service/shop/s{i:03}", "created") for i in range(150)]
    results.append(ObjectResult("Service/shop/zz", "refused", "x" * 1000))
    kept, omitted = kept_objects(results)
    assert (len(kept), omitted) == (OBJECTS_KEPT, 151 - OBJECTS_KEPT)
    assert kept[0].object == "Service/shop/zz" and len(kept[0].message) == MESSAGE_KEPT


def test_an_attempt_shows_once_its_record_is_stored_with_its_metrics(
    git_repo: GitRepo, monkeypatch: pytest.MonkeyPatch
) -> None:
    # What a reader (the HTTP port) sees while the finished record is being stored: the attempt
    # before it, not yet ready; after: the record, ready, and the metrics already counted.
    git_repo.commit("bookstore", {"mesh.yaml": f.dump(*f.bookstore())})
    r = reconciler(git_repo, FakeObjects())
    records = r.settings.state.records
    store = records.save
    seen_while_saving: list[tuple[int, list[str], float | None]] = []

    def save(record: SourceRecord) -> None:
        if record.history:
            (shown,) = r.records()
            applied = r.metrics.registry.get_sample_value(
                "gitmesh_reconciles_total", {"source": "mesh", "result": "applied"}
            )
            seen_while_saving.append((len(shown.history), r.not_ready(), applied))
        store(record)

    monkeypatch.setattr(records, "save", save)
    r.reconcile("mesh", frozenset({"start"}))
    assert seen_while_saving == [(0, ["mesh"], 1.0)]
    (shown,) = r.records()
    assert (len(shown.history), r.not_ready()) == (1, [])
    assert [h.revision for h in records.all()[0].history] == [shown.last_applied]


def test_two_sources_declaring_one_object_never_write_over_or_prune_each_others(git_repo: GitRepo) -> None:
    shop, web = f.namespace("shop"), f.service("shop", "web")
    web_ref = ObjectRef.of(web)
    git_repo.commit(
        "a and b both declare shop/web",
        {"a/mesh.yaml": f.dump(shop, web), "b/mesh.yaml": f.dump(web, f.service("shop", "b-only"))},
    )
    objects = FakeObjects()
    sources = (
        Source(name="a", url=str(git_repo.path), path="a"),
        Source(name="b", url=str(git_repo.path), path="b"),
    )
    r = Reconciler(sources, settings(objects), Metrics(), threading.Event())
    assert r.reconcile("a", frozenset({"start"})) is None
    assert r.reconcile("b", frozenset({"start"})) is not None  # refused, and retried
    records = {rec.source: rec for rec in r.records()}
    assert "another source's: Service/shop/web (source a)" in records["b"].history[0].summary
    assert [(o.object, o.result, o.message) for o in records["b"].objects] == [
        ("Service/shop/web", "claimed", "applied by a")
    ]
    assert ObjectRef.of(f.service("shop", "b-only")) not in objects.objects  # nothing of b applied
    assert set(r.settings.state.inventories.get("b")) == set()

    # a lets go of it: not pruned, since b declares it; b takes it over on its retry.
    git_repo.commit("a without web", {"a/mesh.yaml": f.dump(shop)})
    r.reconcile("a", frozenset({"manual"}))
    assert web_ref in objects.objects
    r.reconcile("b", frozenset({"retry"}))
    assert web_ref in r.settings.state.inventories.get("b")
    assert {rec.source: rec.history[0].result for rec in r.records()} == {"a": "unchanged", "b": "applied"}

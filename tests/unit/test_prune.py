"""Prune's two walls, against the embedded store: a revision with a kind at a version gitmesh does
not read is refused, and prune never deletes an object the revision still declares."""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path
from typing import Any

import pytest

from gitmesh import pipeline
from gitmesh.cluster.inventory import stale
from gitmesh.errors import PlanError
from gitmesh.objects import ObjectRef
from gitmesh.plan.model import Action
from gitmesh.plan.validate import Validated
from gitmesh.settings import Settings, embedded
from gitmesh.sync.git import Revision, read_directory
from tests import factory as f

TARGET = ObjectRef("access.smi-spec.io", "TrafficTarget", "store", "buyer-to-store")


@pytest.fixture
def store(tmp_path: Path) -> Settings:
    return embedded(tmp_path / "store.db")


def revision(tmp_path: Path, objects: list[dict[str, Any]]) -> Revision:
    root = tmp_path / "revision"
    root.mkdir(exist_ok=True)
    (root / "mesh.yaml").write_text(f.dump(*objects))
    return read_directory(str(root))


def apply(rev: Revision, validated: Validated, store: Settings) -> None:
    pipeline.apply(pipeline.plan(rev, validated, store, "default"), store)


def test_stale_is_what_was_applied_is_live_and_is_declared_no_more() -> None:
    a, b, c, d = (ObjectRef("", "Service", "store", n) for n in "abcd")
    assert stale(previous=[a, b, c], live=[a, b, d], declared=[b]) == [a]


def test_a_target_at_an_unknown_version_refuses_the_revision(tmp_path: Path, store: Settings) -> None:
    objects = f.bookstore()
    first = revision(tmp_path, objects)
    apply(first, pipeline.check(first), store)
    assert TARGET in store.objects.list()

    objects[-1]["apiVersion"] = "access.smi-spec.io/v1alpha9"
    bumped = revision(tmp_path, objects)
    checked = pipeline.check(bumped)
    assert [d.code for d in checked.errors] == ["GM012"]
    assert TARGET in checked.declared
    with pytest.raises(PlanError):
        pipeline.plan(bumped, checked, store, "default")
    assert TARGET in store.objects.list()


def test_an_object_still_declared_is_kept_and_stays_owned(tmp_path: Path, store: Settings) -> None:
    rev = revision(tmp_path, f.bookstore())
    checked = pipeline.check(rev)
    apply(rev, checked, store)
    # As if a stage upstream lost the TrafficTarget while the revision still has it.
    lost = replace(checked, desired=tuple(m for m in checked.desired if m.ref != TARGET))
    plan = pipeline.plan(rev, lost, store, "default")
    (kept,) = [c for c in plan.changes if c.ref == TARGET]
    assert (kept.action, kept.reason) == (Action.NOOP, "kept: the revision still has it")
    apply(rev, lost, store)
    assert TARGET in store.objects.list()
    assert TARGET in store.state.inventories.get("default")
    # Once the revision really has it no more, it is pruned.
    gone = revision(tmp_path, f.bookstore()[:-1])
    plan = pipeline.plan(gone, pipeline.check(gone), store, "default")
    assert [(c.ref, c.action) for c in plan.changes if c.action is not Action.NOOP] == [
        (TARGET, Action.DELETE)
    ]


def test_a_kind_written_without_its_group_is_declared_in_the_group_gitmesh_reads(tmp_path: Path) -> None:
    config = f.mesh_config(True) | {"apiVersion": "v1"}
    checked = pipeline.check(revision(tmp_path, [config]))
    assert [d.code for d in checked.errors] == ["GM012"]
    assert ObjectRef("config.openservicemesh.io", "MeshConfig", "gitmesh-system", "mesh") in checked.declared

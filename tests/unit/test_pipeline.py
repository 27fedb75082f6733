"""The pipeline: its pause of the cyclic garbage collector leaks nothing in a long-running caller; a
plan is applied only against the state it was made against."""

from __future__ import annotations

import copy
import gc
import weakref
from collections.abc import Iterator
from pathlib import Path

import pytest

from gitmesh import pipeline
from gitmesh.cluster.port import Live
from gitmesh.errors import StalePlan
from gitmesh.objects import ObjectRef
from gitmesh.sync.git import read_directory
from tests import factory as f
from tests.fakes import FakeObjects, settings


class Cycle:
    def __init__(self) -> None:
        self.me = self


@pytest.fixture(autouse=True)
def thawed() -> Iterator[None]:
    yield
    gc.unfreeze()


@pipeline._without_cycle_collection()
def stage() -> weakref.ref[Cycle]:
    return weakref.ref(Cycle())  # garbage once returned, but only the cyclic collector can free it


def test_what_the_stages_froze_is_collected_once_thawed() -> None:
    first, second = stage(), stage()
    gc.collect()
    assert first() is not None and second() is not None  # frozen: out of the collector's sight
    assert gc.get_freeze_count() > 0
    pipeline.thaw()
    assert first() is None and second() is None
    assert gc.get_freeze_count() == 0
    assert gc.isenabled()


def test_a_plan_is_stale_once_another_manager_writes_an_object_it_would_write_over(tmp_path: Path) -> None:
    bookstore = f.bookstore()
    (tmp_path / "mesh.yaml").write_text(f.dump(*bookstore))
    revision = read_directory(str(tmp_path))
    objects = FakeObjects()
    s = settings(objects)
    plan = pipeline.plan(revision, pipeline.check(revision, objects), s, "mesh")
    # Created by someone else since, without gitmesh's label: not among gitmesh's objects, but the
    # plan would write over it.
    theirs = copy.deepcopy(bookstore[0])
    theirs["metadata"]["resourceVersion"] = "7"
    objects.objects[ObjectRef.of(theirs)] = Live.of(theirs)
    with pytest.raises(StalePlan):
        pipeline.apply(plan, s)
    assert objects.writes == 0

"""The pipeline's pause of the cyclic garbage collector leaks nothing in a long-running caller."""

from __future__ import annotations

import gc
import weakref
from collections.abc import Iterator

import pytest

from gitmesh import pipeline


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

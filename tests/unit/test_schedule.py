"""What the controller reconciles, and when: the choice of commit, and triggers never lost or doubled."""

from __future__ import annotations

import threading
from collections.abc import Iterator

import pytest

from gitmesh.controller.reconciler import choose
from gitmesh.controller.schedule import Controller
from gitmesh.demo import eventually
from gitmesh.sync.source import Source


@pytest.mark.parametrize(
    ("head", "seen", "failures", "triggers", "stalled", "chosen"),
    [
        ("b", "a", 0, {"interval"}, False, ("b", False)),  # a new commit
        ("a", None, 0, {"start"}, False, ("a", False)),  # the first look after a start
        ("a", "a", 0, {"interval"}, False, None),  # nothing new
        ("a", "a", 0, {"webhook"}, False, None),  # a push elsewhere: nothing new here
        ("a", "a", 2, {"retry"}, False, ("a", False)),  # the last attempt failed: again
        ("a", "a", 0, {"manual"}, False, ("a", False)),  # asked for
        ("a", "a", 0, {"drift"}, False, ("a", False)),  # drift check of the applied head
        ("a", "a", 0, {"drift"}, True, ("good", True)),  # the head is stalled: the last good one
        ("a", "a", 0, {"drift", "interval"}, True, ("good", True)),  # a poll beside it changes nothing
        ("a", "a", 0, {"drift", "manual"}, True, ("a", False)),  # asked for: the head itself
        ("b", "a", 0, {"drift"}, True, ("b", False)),  # a new head beats drift
    ],
)
def test_choose(
    head: str,
    seen: str | None,
    failures: int,
    triggers: set[str],
    stalled: bool,
    chosen: tuple[str, bool] | None,
) -> None:
    got = choose(
        head, seen=seen, failures=failures, triggers=frozenset(triggers), stalled=stalled, last_applied="good"
    )
    assert got == chosen


class BlockingReconciler:
    """Records each run's triggers; a run waits until the test lets it finish."""

    def __init__(self) -> None:
        self.sources = {"mesh": Source("mesh", "/nowhere", interval=3600, drift_interval=3600)}
        self.runs: list[frozenset[str]] = []
        self.running = threading.Event()
        self.release = threading.Event()
        self.concurrent = 0
        self.most_concurrent = 0
        self._lock = threading.Lock()

    def reconcile(self, name: str, triggers: frozenset[str]) -> float | None:
        with self._lock:
            self.concurrent += 1
            self.most_concurrent = max(self.most_concurrent, self.concurrent)
            self.runs.append(triggers)
        self.running.set()
        self.release.wait(30)
        with self._lock:
            self.concurrent -= 1
        return None


@pytest.fixture
def controller() -> Iterator[tuple[Controller, BlockingReconciler]]:
    fake = BlockingReconciler()
    c = Controller(fake, threading.Event())  # type: ignore[arg-type]
    c.start()
    yield c, fake
    fake.release.set()
    c.stop()


def test_triggers_during_a_run_are_served_once_after_it(
    controller: tuple[Controller, BlockingReconciler],
) -> None:
    c, fake = controller
    assert fake.running.wait(30)  # the first run, at start
    assert c.trigger("mesh", "webhook") and c.trigger("mesh", "manual") and c.trigger("mesh", "webhook")
    assert not c.trigger("other", "webhook")
    fake.release.set()
    eventually(lambda: list(fake.runs), lambda runs: len(runs) == 2, "the second run")
    assert fake.runs == [frozenset({"start"}), frozenset({"webhook", "manual"})]
    assert fake.most_concurrent == 1


def test_a_trigger_while_idle_runs_at_once(controller: tuple[Controller, BlockingReconciler]) -> None:
    c, fake = controller
    fake.release.set()
    eventually(lambda: list(fake.runs), lambda runs: len(runs) == 1, "the first run")
    c.trigger("mesh", "webhook")
    eventually(lambda: list(fake.runs), lambda runs: len(runs) == 2, "the triggered run")
    assert fake.runs[1] == frozenset({"webhook"})


def test_a_trigger_before_the_start_is_served_by_the_first_run() -> None:
    fake = BlockingReconciler()
    c = Controller(fake, threading.Event())  # type: ignore[arg-type]
    assert c.trigger("mesh", "webhook")
    fake.release.set()
    c.start()
    try:
        eventually(lambda: list(fake.runs), lambda runs: len(runs) == 1, "the first run")
        assert fake.runs == [frozenset({"start", "webhook"})]
    finally:
        c.stop()

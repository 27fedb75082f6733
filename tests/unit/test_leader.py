"""Leader election's logic on a fake clock and an in-memory Lease with resourceVersions."""

from __future__ import annotations

import threading
from datetime import UTC, datetime

from gitmesh.controller import leader
from gitmesh.controller.leader import LEASE_DURATION, RENEW_DEADLINE, RETRY_PERIOD, Elector, LeaseRecord
from gitmesh.errors import ClusterError

WALL = datetime(2026, 1, 1, tzinfo=UTC)


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


class MemoryLeases:
    """A Lease as the API server keeps it: a write over a stale version is refused."""

    def __init__(self) -> None:
        self.record: LeaseRecord | None = None
        self.version = 0
        self.down = False

    def get(self) -> tuple[LeaseRecord, str] | None:
        if self.down:
            raise ClusterError("the API server is unreachable")
        return (self.record, str(self.version)) if self.record else None

    def create(self, record: LeaseRecord) -> str | None:
        if self.record is not None:
            return None
        self.record, self.version = record, self.version + 1
        return str(self.version)

    def replace(self, record: LeaseRecord, version: str) -> str | None:
        if version != str(self.version):
            return None
        self.record, self.version = record, self.version + 1
        return str(self.version)


def electors(leases: MemoryLeases, clock: Clock, *names: str) -> list[Elector]:
    return [Elector(leases, name, clock, lambda: WALL) for name in names]


def test_deadlines_leave_the_old_leader_time_to_stop() -> None:
    assert RETRY_PERIOD < RENEW_DEADLINE < LEASE_DURATION


def test_claim_takes_an_empty_lease_renews_its_own_and_waits_for_another_to_expire() -> None:
    mine = LeaseRecord("a", LEASE_DURATION, WALL, WALL, 3)
    theirs = LeaseRecord("b", LEASE_DURATION, WALL, WALL, 3)
    assert leader.claim(leader.Observed(None, "", 0.0), "a", 0.0, WALL) == LeaseRecord(
        "a", LEASE_DURATION, WALL, WALL, 0
    )
    renewed = leader.claim(leader.Observed(mine, "1", 0.0), "a", 100.0, WALL)
    assert renewed is not None and (renewed.holder, renewed.transitions) == ("a", 3)
    assert leader.claim(leader.Observed(theirs, "1", 0.0), "a", LEASE_DURATION - 0.1, WALL) is None
    taken = leader.claim(leader.Observed(theirs, "1", 0.0), "a", LEASE_DURATION, WALL)
    assert taken is not None and (taken.holder, taken.transitions) == ("a", 4)
    released = LeaseRecord("", LEASE_DURATION, WALL, WALL, 3)
    assert leader.claim(leader.Observed(released, "1", 0.0), "a", 0.0, WALL) is not None


def test_expiry_counts_from_when_this_replica_saw_the_lease_written_not_from_its_timestamps() -> None:
    record = LeaseRecord("b", LEASE_DURATION, WALL, WALL, 0)
    first = leader.observe(None, record, "7", 50.0)
    assert leader.observe(first, record, "7", 60.0) is first
    # Written again (renewed), even with the same timestamps: the wait starts over.
    assert leader.observe(first, record, "8", 60.0).since == 60.0


def test_one_leader_of_two_and_the_other_takes_over_only_after_the_lease_duration() -> None:
    leases, clock = MemoryLeases(), Clock()
    a, b = electors(leases, clock, "a", "b")
    assert a.step() and b.step()
    assert a.leading.is_set() and not b.leading.is_set()
    # a stops renewing (its process is gone); b sees the same record until the duration has passed.
    while clock.now < 1000.0 + LEASE_DURATION - RETRY_PERIOD:
        clock.now += RETRY_PERIOD
        b.step()
        assert not b.leading.is_set(), clock.now
    clock.now += RETRY_PERIOD * 2
    b.step()
    assert b.leading.is_set()
    assert leases.record is not None and (leases.record.holder, leases.record.transitions) == ("b", 1)


def test_a_leader_keeps_the_lease_while_it_renews() -> None:
    leases, clock = MemoryLeases(), Clock()
    a, b = electors(leases, clock, "a", "b")
    for _ in range(50):
        assert a.step()
        b.step()
        clock.now += RETRY_PERIOD
    assert a.leading.is_set() and not b.leading.is_set()


def test_a_leader_that_cannot_renew_stops_before_another_may_take_the_lease() -> None:
    leases, clock = MemoryLeases(), Clock()
    (a,) = electors(leases, clock, "a")
    assert a.step() and a.leading.is_set()
    leases.down = True
    while a.step():
        clock.now += RETRY_PERIOD
    assert not a.leading.is_set()
    assert clock.now - 1000.0 >= RENEW_DEADLINE and clock.now - 1000.0 < LEASE_DURATION


def test_a_new_leader_keeps_leading_through_an_unanswered_renewal() -> None:
    leases, clock = MemoryLeases(), Clock()
    leases.record = LeaseRecord("b", LEASE_DURATION, WALL, WALL, 0)
    (a,) = electors(leases, clock, "a")
    assert a.step() and not a.leading.is_set()
    clock.now += LEASE_DURATION
    assert a.step() and a.leading.is_set()
    leases.down = True
    clock.now += RETRY_PERIOD
    assert a.step() and a.leading.is_set()


def test_a_leader_whose_lease_was_taken_stops_at_once() -> None:
    leases, clock = MemoryLeases(), Clock()
    (a,) = electors(leases, clock, "a")
    assert a.step()
    assert leases.record is not None
    leases.replace(LeaseRecord("b", LEASE_DURATION, WALL, WALL, 1), str(leases.version))
    assert not a.step()
    assert not a.leading.is_set()


def test_of_two_writers_over_one_version_only_one_wins() -> None:
    leases, clock = MemoryLeases(), Clock()
    a, b = electors(leases, clock, "a", "b")
    assert a.attempt()
    clock.now += LEASE_DURATION + 1
    seen = leases.get()
    assert seen is not None
    # b read version 1; a renews first: b's write over version 1 is refused.
    _, version = seen
    assert a.attempt()
    assert leases.replace(LeaseRecord("b", LEASE_DURATION, WALL, WALL, 1), version) is None
    assert not b.attempt()


def test_a_replica_announces_it_does_not_lead_then_that_it_leads_once_it_does() -> None:
    leases, clock = MemoryLeases(), Clock()
    said: list[bool] = []
    failing = [True]

    def announce(leading: bool) -> None:
        if leading and failing[0]:
            raise ClusterError("the API server is unreachable")
        said.append(leading)

    leases.record = LeaseRecord("b", LEASE_DURATION, WALL, WALL, 0)
    leases.version = 1
    a = Elector(leases, "a", clock, lambda: WALL, announce)
    stopping = threading.Event()
    stopping.set()
    a.run(stopping, lambda: None)  # stopped at once: only the first announcement
    assert said == [False]
    assert a.step() and not a.leading.is_set()
    clock.now += LEASE_DURATION
    assert a.step() and a.leading.is_set()
    assert said == [False]  # refused: tried again on the next step
    failing[0] = False
    clock.now += RETRY_PERIOD
    assert a.step() and a.step()
    assert said == [False, True]


def test_a_released_lease_is_taken_at_once_and_a_follower_releases_nothing() -> None:
    leases, clock = MemoryLeases(), Clock()
    a, b = electors(leases, clock, "a", "b")
    assert a.step() and b.step() and a.leading.is_set()
    b.release()
    assert leases.record is not None and leases.record.holder == "a"
    a.release()
    assert not a.leading.is_set()
    assert leases.record is not None and leases.record.holder == ""
    assert b.step() and b.leading.is_set()
    assert leases.record.holder == "b" and leases.record.transitions == 1
